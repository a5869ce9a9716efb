"""`python -m gvu_jax.generate` and `gvu-jax-generate`: gvu_jax/interop/generate.py."""

from gvu_jax.interop.generate import *  # noqa: F401,F403 - its public names, as before
from gvu_jax.interop.generate import cli

if __name__ == "__main__":
  import gvu_jax.interop.generate as command
  __doc__ = command.__doc__   # --help prints the command's own usage
  cli()
