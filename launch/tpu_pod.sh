#!/usr/bin/env bash
# tpu_vm.sh for a Cloud TPU pod slice: setup and run go to every worker at once
# (--worker=all), so the same gvu_jax command runs on each host and
# jax.distributed.initialize() joins them; logs come from worker 0.
# See launch/README.md, or run with --help.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=tpu_vm.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tpu_vm.sh"
tpu_main pod "${0##*/}" "$@"
