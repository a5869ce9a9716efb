# shellcheck shell=bash
# Helpers shared by launch/*.sh. Sourced, never run on its own.
#
# Conventions every launcher follows:
#   - `run CMD ARGS...` is the only way a command with effects is started: with
#     --dry-run it prints `+ CMD ARGS...` (each word shell-quoted) to stdout and
#     runs nothing; otherwise it prints the same line to stderr and runs it.
#   - `die MESSAGE` prints `error: MESSAGE` (one line) to stderr and exits 2.

GVU_LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GVU_ROOT=$(cd "$GVU_LAUNCH_DIR/.." && pwd)
DRY_RUN=0

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

warn() {
  printf 'warning: %s\n' "$*" >&2
}

# The words, shell-quoted (printf %q, or single quotes where %q would need
# backslashes), joined by single spaces: the line can be pasted into a shell.
quote() {
  local w q sq="'" out=""
  for w in "$@"; do
    printf -v q '%q' "$w"
    if [[ $w =~ ^[-A-Za-z0-9_./:=,@%+]+$ ]]; then
      q=$w
    elif [[ $q != "$w" && $w != *[[:cntrl:]]* ]]; then
      q="'${w//$sq/$sq\\$sq$sq}'"
    fi
    out+="${out:+ }$q"
  done
  printf '%s' "$out"
}

run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    "$@"
  fi
}

# flag_value ARGS...: reads the flag at $1, `--flag=value` or `--flag value`, into
# FLAG and VALUE; FLAG_ARGS is how many arguments it took (1 or 2).
# shellcheck disable=SC2034  # FLAG, VALUE and FLAG_ARGS are read by the caller
flag_value() {
  if [[ $1 == *=* ]]; then
    FLAG=${1%%=*} VALUE=${1#*=} FLAG_ARGS=1
  else
    FLAG=$1
    [[ $# -ge 2 ]] || die "$FLAG needs a value"
    VALUE=$2 FLAG_ARGS=2
  fi
}

# parse_args USAGE_FN SET_FLAG_FN [ARGS...]: the launchers' command line. One
# subcommand into CMD; -h/--help runs USAGE_FN; --dry-run; each `--flag=value` or
# `--flag value` goes to `SET_FLAG_FN --flag value`, each flag named in
# BOOLEAN_FLAGS to `SET_FLAG_FN --flag 1` (SET_FLAG_FN returns 1 for a flag it
# does not know); everything after `--` into EXTRA (HAVE_EXTRA=1).
# shellcheck disable=SC2034  # CMD, EXTRA and HAVE_EXTRA are read by the caller
parse_args() {
  local usage=$1 set_flag=$2
  shift 2
  CMD="" HAVE_EXTRA=0 EXTRA=()
  while (($#)); do
    case $1 in
      --) shift; EXTRA=("$@"); HAVE_EXTRA=1; break ;;
      -h | --help) "$usage"; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --*)
        if [[ " ${BOOLEAN_FLAGS:-} " == *" $1 "* ]]; then
          FLAG=$1 VALUE=1
        else
          flag_value "$@"
          shift $((FLAG_ARGS - 1))
        fi
        "$set_flag" "$FLAG" "$VALUE" || die "unknown flag $FLAG (see --help)"
        ;;
      -*) die "unknown flag $1 (see --help)" ;;
      *)
        [[ -z $CMD ]] || die "one subcommand at a time, got $CMD and $1"
        CMD=$1
        ;;
    esac
    shift
  done
}

# need VALUE FLAG ENVVAR: dies unless VALUE is set.
need() {
  [[ -n $1 ]] || die "$2 (or $3) is required"
}

# A source tarball of the working tree (no git metadata, caches or virtualenvs),
# for hosts that cannot clone the repository.
SOURCE_TARBALL="${TMPDIR:-/tmp}/gvu_jax_src.tgz"
make_source_tarball() {
  run tar -C "$GVU_ROOT" -czf "$SOURCE_TARBALL" \
    --exclude=.git --exclude=__pycache__ --exclude='*.pyc' --exclude=.pytest_cache \
    --exclude=.venv --exclude=venv --exclude=gvu_workdir --exclude=tpu_logs .
}

# The remote shell text that puts the code into DIR: a fresh clone (or a fast-forward
# of an existing one) when REPO_URL is set, else the uploaded tarball ARCHIVE unpacked.
# Usage: fetch_code_snippet DIR REPO_URL ARCHIVE
fetch_code_snippet() {
  local dir=$1 url=$2 archive=$3 qdir
  qdir=$(quote "$dir")
  if [[ -n $url ]]; then
    printf 'if [ -d %s/.git ]; then git -C %s pull --ff-only; else git clone %s %s; fi' \
      "$qdir" "$qdir" "$(quote "$url")" "$qdir"
  else
    printf 'mkdir -p %s && tar -xzf %s -C %s && rm -f %s' \
      "$qdir" "$(quote "$archive")" "$qdir" "$(quote "$archive")"
  fi
}

# True when any argument sets the device mesh (--config.mesh.X=... or --config.mesh=...).
has_mesh_flag() {
  local a
  for a in "$@"; do
    case $a in --config.mesh.* | --config.mesh=*) return 0 ;; esac
  done
  return 1
}
