"""Orbax checkpoints: a CheckpointManager per stage (state + JSON metadata, async
saves, keep-N) and single frozen checkpoints (the reference policy), plus the
model-config guard that refuses to mix checkpoints of different models."""

import contextlib
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from gvu_jax.infra import files, hosts
from gvu_jax.infra.errors import InputError

MODEL_CONFIG_FILE = "model_config.json"


class CheckpointMismatch(InputError):
  """A checkpoint directory belongs to a different model configuration."""


def check_model_config(directory, model_config: dict):
  """Record `model_config` in `directory`, or refuse if a different one is there
  (host 0 reads and writes; every host gets its answer)."""
  hosts.agreed(f"model config {directory}", lambda: _check_model_config(directory, model_config))


def _check_model_config(directory, model_config):
  path = os.path.join(directory, MODEL_CONFIG_FILE)
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise InputError(f"{path}: damaged ({e}); it says which model the checkpoints beside it "
                       "hold, so use another --workdir") from None
    current = json.loads(json.dumps(model_config))   # same JSON normal form
    if stored != current:
      diffs = [f"{k}: checkpoint has {v!r}, config has {w!r}"
               for k, (v, w) in _diff(stored, current).items()]
      raise CheckpointMismatch(f"{directory} holds a checkpoint of a different model "
                               f"({'; '.join(diffs)}); use another --workdir")
    return
  os.makedirs(directory, exist_ok=True)
  files.write_atomic(path, json.dumps(model_config, indent=2, sort_keys=True))


def _diff(a, b, prefix=""):
  out = {}
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key), b.get(key)
    if isinstance(va, dict) and isinstance(vb, dict):
      out.update(_diff(va, vb, f"{prefix}{key}."))
    elif va != vb:
      out[f"{prefix}{key}"] = (va, vb)
  return out


def _absolute(path):
  """Local paths made absolute (Orbax wants that); gs:// and other URLs as given."""
  return path if "://" in str(path) else os.path.abspath(path)


def abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointStore:
  """Numbered checkpoints of a training state (any pytree) and JSON metadata.

  Saves are asynchronous; an interrupted save is never listed (Orbax finalizes
  a step atomically), so `latest_step()` is always restorable.
  """

  def __init__(self, directory, keep):
    self.manager = ocp.CheckpointManager(
        _absolute(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self):
    """The newest complete step (None: none), as host 0 lists it: every host
    resumes from, or skips to, the same one."""
    return hosts.agreed(f"latest step {self.manager.directory}", self.manager.latest_step)

  def save(self, step, state, meta):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step, like):
    """Restores into the structure, shapes and dtypes of `like`; a damaged step
    (a truncated or corrupted file) is one error line naming it, never loaded."""
    with _one_line_errors(os.path.join(str(self.manager.directory), str(step))):
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract(like)), meta=ocp.args.JsonRestore()))
    hosts.alive(f"restored {self.manager.directory}/{step}")
    return out["state"], out["meta"]

  def restore_part(self, step, like):
    """Only the entries of the state that `like` names (e.g. {"trainable": ...}),
    as numpy arrays: the rest (optimizer moments) is never read."""
    path = os.path.join(str(self.manager.directory), str(step))
    with _one_line_errors(path):
      return ocp.PyTreeCheckpointer().restore(
          os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
              abstract(like), partial_restore=True, restore_args=jax.tree.map(
                  lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), like)))

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def save_frozen(path, tree):
  """A single checkpoint that is written once (e.g. the reference policy)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(_absolute(path), tree)
  checkpointer.wait_until_finished()
  hosts.alive(f"saved {path}")


def load_frozen(path, like):
  with _one_line_errors(path):
    return ocp.StandardCheckpointer().restore(_absolute(path), abstract(like))


@contextlib.contextmanager
def _one_line_errors(path, settle_s=0.5):
  """A checkpoint read whose failure (a truncated or corrupted file) becomes one
  InputError line naming `path`. While it runs, what goes to stderr is held back:
  after a failed read, TensorStore's outstanding reads finish on other threads and
  print tracebacks about Orbax's closed event loop; those are dropped, anything
  printed by a read that succeeds is passed on."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    failed = None
    try:
      yield
    except Exception as e:  # noqa: BLE001 - whatever Orbax or TensorStore raise
      failed = e
      time.sleep(settle_s)   # let the stray callbacks print into `held`
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if failed is None:
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))
  if failed is not None:
    first = (str(failed).strip().splitlines() or [""])[0][:300]
    raise InputError(f"{path}: cannot read this checkpoint ({type(failed).__name__}: {first}); "
                     "it is damaged or incomplete: move it away to resume from the one before")
