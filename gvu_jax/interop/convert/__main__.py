"""python -m gvu_jax.convert --src=DIR|hf://ORG/NAME[@REVISION] --dst=DIR
    [--model=auto|<preset>] [--dtype=auto|float32|bfloat16|float16] [--force] [--check]"""


from absl import flags
from etils import epath

from gvu_jax.infra import cli as cli_lib
from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert import hub, parity
from gvu_jax.interop.convert.source import read_model_config
from gvu_jax.interop.convert.write import convert
from gvu_jax.models import presets


def define_flags():
  """The CLI's flags (defined only when run as a program, so importing this
  module from elsewhere never clashes with another program's flags)."""
  flags.DEFINE_string("src", None, "The published checkpoint: a directory (either layout), "
                      "or hf://ORG/NAME[@REVISION] (or ORG/NAME) on the Hugging Face Hub.")
  flags.DEFINE_string("dst", None, "Output directory (local or gs://).")
  flags.DEFINE_string("model", "auto", f"auto (from config.json) or one of {presets.JANUS_PRESETS}.")
  flags.DEFINE_string("dtype", "auto", "Stored dtype: auto (the source's own), float32, "
                      "bfloat16 or float16.")
  flags.DEFINE_bool("force", False, "Replace an existing conversion at --dst.")
  flags.DEFINE_bool("check", False, "After converting, compare against transformers on random "
                    "inputs (needs torch + transformers); exit 1 above tolerance.")


def main(f):
  if not f.src or not f.dst:
    raise InputError("--src and --dst are required")
  src = hub.resolve(f.src)
  if f.check and read_model_config(epath.Path(src), f.model).family != "janus":
    raise InputError("--check compares against transformers' Janus; X-Omni has no "
                     "transformers model (tests/test_xomni.py checks it against Qwen2's)")
  convert(src, f.dst, f.model, f.dtype, f.force)
  if f.check:
    return cli_lib.check_status(parity.check(src, f.dst))


def cli():
  cli_lib.run(define_flags, main)


if __name__ == "__main__":
  cli()
