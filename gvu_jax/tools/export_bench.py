"""Export time and peak host memory at a release's size, on random weights.

  python -m gvu_jax.tools.export_bench --model=janus_pro_1b --dir=/tmp/export_bench
      [--conversion_dtype=bfloat16] [--lora_rank=16] [--formats=transformers,peft]

Writes a random conversion of the preset (weights in --conversion_dtype, as the
Hub stores them) and a GvU workdir around it whose checkpoint holds random LoRA
adapters and Adam moments as a run's does, then runs `python -m gvu_jax.export`
once per format in a child process and prints, per format, the wall seconds,
the child's peak resident memory (its VmHWM) and the bytes written, as JSON.
Nothing is downloaded; the two inputs are reused when they are already there.
"""

import json
import pathlib
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
from absl import flags
from etils import epath

from gvu_jax.infra import checkpoint, cli as cli_lib
from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert import store
from gvu_jax.models import build, lora, presets
from gvu_jax.text import janus as janus_text

# Janus-Pro's special-token ids (its tokenizer.json).
SPECIAL_IDS = {janus_text.BOS: 100000, janus_text.EOS: 100001, janus_text.PAD: 100015,
               janus_text.BOI: 100016, janus_text.EOI: 100593, janus_text.IMG: 100581}
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}


def _random_like(tree, dtype, seed, scale=0.02):
  """Normal(0, scale) leaves of the shapes of `tree`, made one leaf at a time."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * scale).astype(dtype),
                      tree)


def write_conversion(directory, model_name, dtype):
  m = presets.preset(model_name)
  if m.family != "janus":
    raise InputError(f"--model={model_name}: the export benchmark builds Janus models")
  directory.mkdir(parents=True)
  _, like = build.abstract(m)
  store.save_params(directory / "params", _random_like(like, DTYPES[dtype], 0))
  (directory / store.CONFIG_FILE).write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True))
  janus_text.write_stand_in_tokenizer(str(directory), SPECIAL_IDS, m.lm.vocab_size)
  (directory / store.DONE_FILE).write_text(json.dumps(
      {"source": f"random {model_name}", "layout": "transformers", "dtype": dtype}))
  return m


def write_workdir(workdir, conversion, m, rank):
  lora_cfg = dict(lora_rank=rank, lora_alpha=2.0 * rank,
                  lora_targets=["q", "k", "v", "o", "gate", "up", "down"])
  (workdir / "gvu").mkdir(parents=True)
  signature = dict(build.signature(m), gvu_lora=lora_cfg, checkpoint=str(conversion))
  (workdir / "gvu" / "model_config.json").write_text(json.dumps(signature))
  (workdir / "gvu" / "run.json").write_text(json.dumps({"config": {"bench": "export"}}))
  adapters = lora.split(build.abstract(m, **lora_cfg)[1])[1]
  adapters = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32), adapters)
  state = {"trainable": _random_like(adapters, np.float32, 1),
           "opt_state": {"mu": _random_like(adapters, np.float32, 2),
                         "nu": _random_like(adapters, np.float32, 3)}}
  checkpoints = checkpoint.CheckpointStore(str(workdir / "gvu" / "checkpoints"), keep=1)
  checkpoints.save(1, state, {})
  checkpoints.close()


def _size(path):
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _peak_rss(pid):
  """The process's peak resident memory so far in bytes (VmHWM: reset at exec,
  so unlike getrusage it does not count the parent's memory at fork)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
  except (OSError, StopIteration):
    return 0


def measure(workdir, dst, fmt, dtype):
  """One export in a child process -> {seconds, peak_rss_gib, written_gib}."""
  tic, peak = time.perf_counter(), 0
  child = subprocess.Popen([sys.executable, "-m", "gvu_jax.export", f"--workdir={workdir}",
                            f"--dst={dst}", f"--format={fmt}", f"--dtype={dtype}", "--force"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  while child.poll() is None:   # VmHWM only grows: the last reading is the peak
    peak = max(peak, _peak_rss(child.pid))
    time.sleep(0.05)
  seconds = time.perf_counter() - tic
  if child.returncode != 0:
    raise RuntimeError(f"export --format={fmt} failed: {child.stderr.read()[-2000:]}")
  return {"seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2),
          "written_gib": round(_size(pathlib.Path(dst)) / 2**30, 2)}


def define_flags():
  flags.DEFINE_string("model", "janus_pro_1b", "A Janus preset (models/presets.py).")
  flags.DEFINE_string("dir", None, "Where the random conversion, workdir and exports go.")
  flags.DEFINE_enum("conversion_dtype", "bfloat16", list(DTYPES), "The conversion's dtype.")
  flags.DEFINE_integer("lora_rank", 16, "The adapters' rank.")
  flags.DEFINE_list("formats", ["transformers", "peft"], "Export formats to time.")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "The export's stored dtype.")


def main(f):
  if not f.dir:
    raise InputError("--dir is required")
  root = epath.Path(f.dir)
  conversion, workdir = root / "conversion", root / "workdir"
  tic = time.perf_counter()
  if not (conversion / store.DONE_FILE).exists():
    m = write_conversion(conversion, f.model, f.conversion_dtype)
    write_workdir(workdir, conversion, m, f.lora_rank)
  m = store.read_converted_config(conversion)
  _, like = build.abstract(m)
  params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(like))
  results = {"model": f.model, "parameters": params, "conversion_dtype": f.conversion_dtype,
             "export_dtype": f.dtype, "lora_rank": f.lora_rank,
             "setup_seconds": round(time.perf_counter() - tic, 1)}
  for fmt in f.formats:
    results[fmt] = measure(workdir, root / f"export_{fmt}", fmt, f.dtype)
    print(fmt, results[fmt], flush=True)
  print(json.dumps(results, indent=2))


def cli():
  cli_lib.run(define_flags, main)


if __name__ == "__main__":
  cli()
