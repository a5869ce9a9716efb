#!/usr/bin/env bash
# Create, set up, run, fetch the results of, and delete one Cloud TPU VM.
# launch/tpu_pod.sh sources this file and runs the same steps on every worker of
# a pod slice. See launch/README.md, or run with --help.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

tpu_usage() {
  local script=$1 what
  if [[ $TPU_MODE == pod ]]; then
    what="a Cloud TPU pod slice (every ssh/scp on --worker=all; logs from worker 0)"
  else
    what="one Cloud TPU VM"
  fi
  cat <<EOF
Usage: $script SUBCOMMAND [flags] [-- ARGS for gvu_jax.main]

Runs gvu_jax on $what through
\`gcloud compute tpus tpu-vm\`.

Subcommands:
  check    here, before renting: compile every program of a GvU step for the slice
           (--topology) with the TPU compiler (pip install "gvu_jax[tpu]"; no TPU
           needed) and print each program's memory per chip and whether it fits
  create   create the TPU (--zone, --type, --version; --project, --spot)
  setup    copy the repository there (tarball of this checkout, or git clone of
           --repo), then pip install requirements.txt and jax[tpu] (in a Python
           $PYTHON_VERSION virtualenv made by uv, unless --python names an interpreter)
  run      python -m gvu_jax.main --config=CONFIG --workdir=WORKDIR [ARGS after --]
           (output also goes to REMOTE_DIR/gvu_run.log on the TPU)
  logs     fetch report.json, report.md, grids, metrics and gvu_run.log (no
           checkpoints) into --logs-dir
  delete   delete the TPU
  all      create, setup, run, logs, delete; once created, the TPU is deleted
           even when a later step fails

Flags (environment fallback in brackets):
  --name NAME            TPU name [TPU_NAME] (required)
  --zone ZONE            e.g. us-central2-b [TPU_ZONE] (required)
  --type TYPE            accelerator type, e.g. v5litepod-8 [TPU_TYPE] (create, all)
  --version VERSION      TPU runtime, e.g. v2-alpha-tpuv5-lite [TPU_VERSION] (create, all)
  --project PROJECT      GCP project [GCP_PROJECT] (default: gcloud's)
  --spot                 create a Spot TPU
  --config FILE[:PRESET] recipe, relative to the repository [GVU_CONFIG]
                         (default configs/synthetic.py)
  --workdir DIR          run directory on the TPU: a path (relative paths are under
                         REMOTE_DIR) or gs://... [GVU_WORKDIR] (default gvu_workdir)
  --repo URL             git clone URL for setup [GVU_REPO] (default: upload this checkout)
  --remote-dir DIR       where the code lives on the TPU [GVU_REMOTE_DIR] (default gvu_jax)
  --python PY            use this interpreter on the TPU instead of the uv virtualenv
                         [GVU_PYTHON]
  --python-version V     Python of the uv virtualenv [GVU_PYTHON_VERSION] (default 3.11)
  --logs-dir DIR         local destination of logs [GVU_LOGS_DIR] (default tpu_logs/NAME)
  --topology SLICE       the slice for check, as libtpu names it: v5e:2x4 for
                         v5litepod-8, v4:2x2x1 for v4-8, v5p:2x2x1 for v5p-8,
                         v6e:2x4 for v6e-8 [GVU_TOPOLOGY]
  --dry-run              print each command (prefixed by "+ ") and run nothing
  -h, --help             this help

Example (check first, here; then rent):
  $script check --topology=v5e:2x4 --config=configs/janus_pro_7b.py:lora
  $script all --name=my-tpu --zone=us-central2-b --type=v5litepod-8 \\
      --version=v2-alpha-tpuv5-lite -- --config.seed=1
EOF
}

tpu_help() {
  tpu_usage "$TPU_SCRIPT"
}

tpu_flag() {
  case $1 in
    --spot) SPOT=1 ;;
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --type) TYPE=$2 ;;
    --version) VERSION=$2 ;;
    --project) PROJECT=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --repo) REPO=$2 ;;
    --remote-dir) REMOTE_DIR=$2 ;;
    --python) PYTHON=$2 ;;
    --python-version) PYTHON_VERSION=$2 ;;
    --logs-dir) LOGS_DIR=$2 ;;
    --topology) TOPOLOGY=$2 ;;
    *) return 1 ;;
  esac
}

tpu_main() {
  TPU_MODE=$1
  local script=$2
  shift 2
  NAME=${TPU_NAME:-} ZONE=${TPU_ZONE:-} TYPE=${TPU_TYPE:-} VERSION=${TPU_VERSION:-}
  PROJECT=${GCP_PROJECT:-} SPOT=0
  CONFIG=${GVU_CONFIG:-configs/synthetic.py} WORKDIR=${GVU_WORKDIR:-gvu_workdir}
  REPO=${GVU_REPO:-} REMOTE_DIR=${GVU_REMOTE_DIR:-gvu_jax} PYTHON=${GVU_PYTHON:-}
  PYTHON_VERSION=${GVU_PYTHON_VERSION:-3.11} LOGS_DIR=${GVU_LOGS_DIR:-}
  TOPOLOGY=${GVU_TOPOLOGY:-}
  BOOLEAN_FLAGS="--spot"
  TPU_SCRIPT=$script
  parse_args tpu_help tpu_flag "$@"
  local cmd=$CMD have_extra=$HAVE_EXTRA

  case $cmd in
    check | create | setup | run | logs | delete | all) ;;
    "") die "a subcommand is required: check, create, setup, run, logs, delete or all (see --help)" ;;
    *) die "unknown subcommand $cmd: expected check, create, setup, run, logs, delete or all" ;;
  esac
  if ((have_extra)) && [[ $cmd != run && $cmd != all && $cmd != check ]]; then
    die "arguments after -- go to gvu_jax.main: only for check, run and all"
  fi
  if [[ $cmd == check ]]; then
    need "$TOPOLOGY" --topology GVU_TOPOLOGY
    tpu_check
    return
  fi
  need "$NAME" --name TPU_NAME
  need "$ZONE" --zone TPU_ZONE
  if [[ $cmd == create || $cmd == all ]]; then
    need "$TYPE" --type TPU_TYPE
    need "$VERSION" --version TPU_VERSION
  fi
  LOGS_DIR=${LOGS_DIR:-tpu_logs/$NAME}
  if [[ $TPU_MODE == pod && $WORKDIR != gs://* && ($cmd == run || $cmd == all) ]]; then
    warn "--workdir=$WORKDIR is local to each worker; a pod's checkpoints need a shared gs:// workdir"
  fi

  GCLOUD=(gcloud compute tpus tpu-vm)
  WHERE=(--zone="$ZONE")
  [[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
  if [[ $TPU_MODE == pod ]]; then ALL_WORKERS=(--worker=all); else ALL_WORKERS=(); fi

  "tpu_$cmd"
}

# tpu_ssh WORKER_ARGS... -- REMOTE_COMMAND
tpu_ssh() {
  local workers=()
  while [[ $1 != -- ]]; do workers+=("$1"); shift; done
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" ${workers[@]+"${workers[@]}"} --command="$2"
}

# tpu_scp WORKER_ARGS... -- SRC DST
tpu_scp() {
  local workers=()
  while [[ $1 != -- ]]; do workers+=("$1"); shift; done
  run "${GCLOUD[@]}" scp "$2" "$3" "${WHERE[@]}" ${workers[@]+"${workers[@]}"}
}

# The interpreter on the TPU, relative to REMOTE_DIR.
tpu_python() {
  if [[ -n $PYTHON ]]; then printf '%s' "$(quote "$PYTHON")"; else printf '.venv/bin/python'; fi
}

# The compile check, on this machine: the run's programs compiled for the slice by
# the TPU compiler, nothing allocated (docs/scaling.md, "Before renting").
tpu_check() {
  run env JAX_PLATFORMS=cpu PYTHONPATH="$GVU_ROOT" "${GVU_LOCAL_PYTHON:-python3}" -m gvu_jax.main \
    --config="$GVU_ROOT/$CONFIG" --config.mode=bench --config.bench.topology="$TOPOLOGY" \
    --workdir="${LOGS_DIR:-tpu_logs}/check_${TOPOLOGY//:/_}" ${EXTRA[@]+"${EXTRA[@]}"}
}

tpu_create() {
  local spot=()
  ((SPOT)) && spot=(--spot)
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" \
    --version="$VERSION" ${spot[@]+"${spot[@]}"}
}

tpu_setup() {
  local archive=gvu_jax_src.tgz install
  if [[ -z $REPO ]]; then
    make_source_tarball
    tpu_scp ${ALL_WORKERS[@]+"${ALL_WORKERS[@]}"} -- "$SOURCE_TARBALL" "$NAME:$archive"
  fi
  if [[ -n $PYTHON ]]; then
    install="$(quote "$PYTHON") -m pip install -r requirements.txt \"jax[tpu]\""
  else
    # Cloud TPU images ship an older python3 than jax needs: uv (from PyPI) makes a
    # virtualenv with its own Python $PYTHON_VERSION.
    install="{ python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv; }"
    install+=" && { [ -x .venv/bin/python ] || python3 -m uv venv --python $(quote "$PYTHON_VERSION") .venv; }"
    install+=" && python3 -m uv pip install --python .venv/bin/python -r requirements.txt \"jax[tpu]\""
  fi
  tpu_ssh ${ALL_WORKERS[@]+"${ALL_WORKERS[@]}"} -- \
    "$(fetch_code_snippet "$REMOTE_DIR" "$REPO" "$archive") && cd $(quote "$REMOTE_DIR") && $install"
}

tpu_run() {
  local main
  main="$(tpu_python) -m gvu_jax.main $(quote --config="$CONFIG" --workdir="$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})"
  tpu_ssh ${ALL_WORKERS[@]+"${ALL_WORKERS[@]}"} -- \
    "cd $(quote "$REMOTE_DIR") && set -o pipefail && $main 2>&1 | tee gvu_run.log"
}

tpu_logs() {
  local worker=()
  [[ $TPU_MODE == pod ]] && worker=(--worker=0)
  run mkdir -p "$LOGS_DIR"
  if [[ $WORKDIR == gs://* ]]; then
    tpu_scp ${worker[@]+"${worker[@]}"} -- "$NAME:$REMOTE_DIR/gvu_run.log" "$LOGS_DIR/gvu_run.log" ||
      warn "no gvu_run.log on the TPU"
    local project=()
    [[ -z $PROJECT ]] || project=(--project="$PROJECT")
    run gcloud storage rsync --recursive '--exclude=(^|.*/)(checkpoints|reference)/.*' \
      ${project[@]+"${project[@]}"} "$WORKDIR" "$LOGS_DIR"
  else
    tpu_ssh ${worker[@]+"${worker[@]}"} -- \
      "cd $(quote "$REMOTE_DIR") && logs=() && { [ ! -f gvu_run.log ] || logs=(gvu_run.log); } && tar -czf \"\$HOME/gvu_logs.tgz\" --exclude=checkpoints --exclude=reference \"\${logs[@]}\" -C $(quote "$WORKDIR") ."
    tpu_scp ${worker[@]+"${worker[@]}"} -- "$NAME:gvu_logs.tgz" "$LOGS_DIR/gvu_logs.tgz"
    run tar -xzf "$LOGS_DIR/gvu_logs.tgz" -C "$LOGS_DIR"
  fi
  ((DRY_RUN)) || printf 'results in %s (report.md, grids/)\n' "$LOGS_DIR" >&2
}

tpu_delete() {
  run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
}

# Deletes the TPU on the way out of `all`, whatever happened after it was created.
tpu_cleanup() {
  local rc=$?
  trap - EXIT
  tpu_delete || rc=1
  exit "$rc"
}

tpu_all() {
  # Armed only once create has succeeded: a failed create may mean that a TPU of
  # this name already exists, and it is not ours to delete.
  tpu_create
  trap tpu_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  tpu_setup
  local rc=0
  tpu_run || rc=$?
  tpu_logs || warn "could not fetch the logs"
  return "$rc"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  tpu_main vm "${0##*/}" "$@"
fi
