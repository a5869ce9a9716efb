"""`python -m gvu_jax.export` and `gvu-jax-export`: gvu_jax/interop/export.py."""

from gvu_jax.interop.export import *  # noqa: F401,F403 - its public names, as before
from gvu_jax.interop.export import cli

if __name__ == "__main__":
  import gvu_jax.interop.export as command
  __doc__ = command.__doc__   # --help prints the command's own usage
  cli()
