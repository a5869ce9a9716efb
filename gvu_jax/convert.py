"""`python -m gvu_jax.convert` and `gvu-jax-convert`: gvu_jax/interop/convert/."""

from gvu_jax.interop.convert import *  # noqa: F401,F403 - its public names, as before
from gvu_jax.interop.convert.__main__ import cli

if __name__ == "__main__":
  import gvu_jax.interop.convert.__main__ as command
  __doc__ = command.__doc__   # --help prints the command's own usage
  cli()
