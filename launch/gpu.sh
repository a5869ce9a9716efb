#!/usr/bin/env bash
# Set up and run gvu_jax on one node with N GPUs, here or over ssh (--host).
# See launch/README.md, or run with --help.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
  cat <<EOF
Usage: ${0##*/} SUBCOMMAND [flags] [-- ARGS for gvu_jax.main]

Runs gvu_jax on one node with N GPUs: this machine, or --host over ssh.

Subcommands:
  setup    pip install requirements.txt and jax[cuda12] (with --host: first copy
           this checkout there, or git clone --repo)
  run      [CUDA_VISIBLE_DEVICES=0..N-1] python -m gvu_jax.main --config=CONFIG
           --workdir=WORKDIR --config.mesh.data=-1 [ARGS after --]; the default
           mesh is left out when ARGS set --config.mesh.*

Flags (environment fallback in brackets):
  --gpus N               use GPUs 0..N-1 (default: every visible GPU) [GVU_GPUS]
  --host USER@NODE       run there over ssh instead of here [GVU_HOST]
  --config FILE[:PRESET] recipe, relative to the repository [GVU_CONFIG]
                         (default configs/synthetic.py)
  --workdir DIR          run directory (default gvu_workdir: relative paths are
                         under the current directory here, under REMOTE_DIR with
                         --host) [GVU_WORKDIR]
  --python PY            interpreter (default python3) [GVU_PYTHON]
  --repo URL             with --host: git clone URL for setup (default: upload this
                         checkout) [GVU_REPO]
  --remote-dir DIR       with --host: where the code lives (default gvu_jax) [GVU_REMOTE_DIR]
  --dry-run              print each command (prefixed by "+ ") and run nothing
  -h, --help             this help

Examples:
  ${0##*/} setup
  ${0##*/} run --gpus=8 --workdir=/scratch/gvu -- --config.seed=1
  ${0##*/} run --gpus=8 --config=configs/janus_pro_7b.py:lora -- \\
      --config.checkpoint=/ckpt/janus_pro_7b --config.mesh.data=1 --config.mesh.fsdp=-1
  ${0##*/} run --host=me@gpu-node --gpus=4 -- --config.seed=2
EOF
}

GPUS=${GVU_GPUS:-} HOST=${GVU_HOST:-}
CONFIG=${GVU_CONFIG:-configs/synthetic.py} WORKDIR=${GVU_WORKDIR:-gvu_workdir}
PYTHON=${GVU_PYTHON:-python3} REPO=${GVU_REPO:-} REMOTE_DIR=${GVU_REMOTE_DIR:-gvu_jax}
set_flag() {
  case $1 in
    --gpus) GPUS=$2 ;;
    --host) HOST=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --python) PYTHON=$2 ;;
    --repo) REPO=$2 ;;
    --remote-dir) REMOTE_DIR=$2 ;;
    *) return 1 ;;
  esac
}
parse_args usage set_flag "$@"
cmd=$CMD have_extra=$HAVE_EXTRA

case $cmd in
  setup | run) ;;
  "") die "a subcommand is required: setup or run (see --help)" ;;
  *) die "unknown subcommand $cmd: expected setup or run" ;;
esac
if ((have_extra)) && [[ $cmd != run ]]; then
  die "arguments after -- go to gvu_jax.main: only for run"
fi
if [[ -n $GPUS && ! $GPUS =~ ^[1-9][0-9]*$ ]]; then
  die "--gpus must be a positive integer, got '$GPUS'"
fi
[[ -n $PYTHON ]] || die "--python (or GVU_PYTHON) is required"
if [[ -n $REPO && -z $HOST ]]; then warn "--repo is only used with --host"; fi

do_setup() {
  if [[ -z $HOST ]]; then
    run "$PYTHON" -m pip install -r "$GVU_ROOT/requirements.txt" "jax[cuda12]"
    return
  fi
  local archive=gvu_jax_src.tgz
  if [[ -z $REPO ]]; then
    make_source_tarball
    run scp "$SOURCE_TARBALL" "$HOST:$archive"
  fi
  run ssh "$HOST" "$(fetch_code_snippet "$REMOTE_DIR" "$REPO" "$archive") && cd $(quote "$REMOTE_DIR") && $(quote "$PYTHON") -m pip install -r requirements.txt \"jax[cuda12]\""
}

do_run() {
  local devices="" i workdir=$WORKDIR mesh=()
  if [[ -n $GPUS ]]; then
    for ((i = 0; i < GPUS; i++)); do devices+="${devices:+,}$i"; done
  fi
  has_mesh_flag ${EXTRA[@]+"${EXTRA[@]}"} || mesh=(--config.mesh.data=-1)
  if [[ -z $HOST ]]; then
    [[ $workdir == /* || $workdir == gs://* ]] || workdir="$PWD/$workdir"
    local env_cmd=()
    [[ -z $devices ]] || env_cmd=(env "CUDA_VISIBLE_DEVICES=$devices")
    cd "$GVU_ROOT"  # so that gvu_jax and configs/ resolve
    run ${env_cmd[@]+"${env_cmd[@]}"} "$PYTHON" -m gvu_jax.main --config="$CONFIG" \
      --workdir="$workdir" ${mesh[@]+"${mesh[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  else
    local prefix=""
    [[ -z $devices ]] || prefix="CUDA_VISIBLE_DEVICES=$devices "
    run ssh "$HOST" "cd $(quote "$REMOTE_DIR") && $prefix$(quote "$PYTHON" -m gvu_jax.main \
      --config="$CONFIG" --workdir="$workdir" ${mesh[@]+"${mesh[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})"
  fi
}

"do_$cmd"
