"""`python -m gvu_jax.claim` and `gvu-jax-claim`: gvu_jax/tools/claim.py."""

from gvu_jax.tools.claim import *  # noqa: F401,F403 - its public names, as before
from gvu_jax.tools.claim import cli

if __name__ == "__main__":
  import gvu_jax.tools.claim as command
  __doc__ = command.__doc__   # --help prints the command's own usage
  cli()
