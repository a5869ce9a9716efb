"""Metrics as JSON lines and a progress bar; only host 0 writes or prints."""

import json
import os

import jax
import numpy as np
import tqdm

from gvu_jax import files


def is_main_host():
  return jax.process_index() == 0


def to_python(metrics):
  return {k: (v if isinstance(v, str) else float(np.asarray(v))) for k, v in metrics.items()}


class MetricsWriter:
  """Appends {"step": s, ...} lines to `path`. A run resumed from step
  `resume_step` first cuts the file back to the whole lines of steps up to it,
  so a crash's cut line or the steps after the checkpoint are not repeated."""

  def __init__(self, path, resume_step=0):
    self.path = path
    if is_main_host():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      files.read_jsonl(path, keep=lambda r: r.get("step", 0) <= resume_step)

  def write(self, step, metrics):
    if is_main_host():
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **to_python(metrics)}) + "\n")


def progress(total, desc, initial=0):
  return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                   disable=not is_main_host(), mininterval=1.0)
