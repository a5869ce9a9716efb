"""What every gvu_jax command line shares (convert, export, generate): absl flags
defined only when run as a program, absl logging at WARNING unless --verbosity
says otherwise, unexpected arguments a usage error, and bad input one `error:`
line with exit status 2 (docs/reliability.md)."""

import json
import sys

from absl import app, flags, logging

from gvu_jax.infra.errors import InputError


def start(argv):
  """What every program does first: no positional arguments; absl (and Orbax, which
  logs every save at INFO) at WARNING unless --verbosity is given."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def check_status(report):
  """Prints a --check report; its exit status: 0 if it passed, else 1."""
  print(json.dumps(report, indent=2))
  return 0 if report["ok"] else 1


def run(define_flags, body):
  """Defines the flags, parses them and exits with `body(flags.FLAGS)`'s status
  (None = 0); an InputError from it is printed as one line, status 2."""
  define_flags()

  def main(argv):
    start(argv)
    try:
      return body(flags.FLAGS) or 0
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2

  app.run(lambda argv: sys.exit(main(argv)))
