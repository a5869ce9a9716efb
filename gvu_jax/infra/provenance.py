"""What produced a stage's results, recorded beside them, so a workdir never
reports results another config or model produced.

Each stage directory (pretrain/, gvu/) holds run.json: the resolved config's
result-affecting keys for that stage, the upstream it started from (GvU: the
pretraining it trains on, or the converted checkpoint), and the environment of
the last run that wrote there (jax and flax versions, device kind and count, git
commit; recorded, not compared). A run whose keys or upstream differ from what a
stage holds is refused before any stage runs, in one line naming each key with
its old and new value; nothing is written by a refused run.

Not compared: how often to log, checkpoint or keep, the devices and mesh, the
attention kernel, rematerialisation, MLP token slices and the shared prompt pass
(the same numbers by another schedule), where datasets live, and `steps` when the
schedule is constant (a longer run then continues a shorter one exactly, its
earlier steps' learning rates unchanged).

A key added to a stage after records began is in INTRODUCED with the value that
reproduces what the code did before it existed: a record without the key matches
that value, so an existing workdir resumes until the key is set otherwise.
"""

import json
import os
import subprocess

import jax

from gvu_jax.infra import files, hosts
from gvu_jax.infra.errors import InputError

RECORD = "run.json"
STAGE_KEYS = {
    "pretrain": ("seed", "model.", "data.split_seed", "data.heldout_fraction",
                 "data.gvu_fraction", "pretrain."),
    "gvu": ("seed", "model.", "model_options.", "checkpoint", "data.", "gvu.", "reward."),
}
RUNTIME = (".log_every", ".checkpoint_every", ".keep", ".grid_every", ".max_nonfinite_steps",
           ".remat", ".attention", ".mlp_chunks", ".shared_prompt_pass", "data.tfds_dir",
           "data.manual_dir")
INTRODUCED = {"pretrain.near_miss_ranking": 0.0}


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items") and key != "token_weights":
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value.to_dict() if hasattr(value, "to_dict") else value
  return out


def stage_config(config, stage):
  """The keys of `config` that decide `stage`'s results, as JSON values."""
  block = config.get(stage)
  constant = block is not None and block.get("schedule") == "constant"
  keys = {}
  for key, value in _flat(config).items():
    if not key.startswith(STAGE_KEYS[stage]) or key.endswith(RUNTIME):
      continue
    if key == f"{stage}.steps" and constant:
      continue
    keys[key] = value
  return json.loads(json.dumps(keys))   # tuples as lists: the JSON normal form


def environment():
  """What ran: versions, devices and the code's git commit (None outside a checkout)."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    commit = commit.stdout.strip() if commit.returncode == 0 else None
  except (OSError, subprocess.SubprocessError):
    commit = None
  import flax
  return {"jax": jax.__version__, "flax": flax.__version__,
          "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
          "process_count": jax.process_count(), "git_commit": commit}


def _read(directory):
  path = os.path.join(directory, RECORD)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: damaged ({e}); it says what produced the results beside it, "
                     "so use another --workdir") from None


def _shown(value):
  text = json.dumps(value)
  return text if len(text) <= 60 else text[:57] + "..."


def upstream(config, stage, source=None):
  """What `stage` starts from: GvU on the embedded world, the pretraining (its keys,
  and the steps it runs, which a constant schedule lets grow); GvU on a converted
  checkpoint, `source`: the run's record of the conversion (stages/context.py)."""
  if stage != "gvu":
    return None
  if source is not None:
    return source
  return {**stage_config(config, "pretrain"), "pretrain.steps": config.pretrain.steps}


def check_stages(config, path, stages, source=None):
  """Before any stage runs: one error naming, for every stage whose directory
  holds results of other keys or another upstream, each key with its old and new
  value. `path(stage)`: the stage's directory. Host 0 reads; every host ends
  with its answer."""
  hosts.agreed("provenance", lambda: _check_stages(config, path, stages, source))


def _check_stages(config, path, stages, source):
  found = [(stage, differences(path(stage), stage_config(config, stage),
                               upstream(config, stage, source))) for stage in stages]
  found = [(stage, diffs) for stage, diffs in found if diffs]
  if found:
    where = os.path.dirname(path(found[0][0]))
    raise InputError(f"{where} holds results of another config: " + "; ".join(
        f"{stage}/ ({', '.join(diffs)})" for stage, diffs in found)
                     + "; use another --workdir, or the same settings")


def record_stage(config, directory, stage, source=None):
  record(directory, stage, stage_config(config, stage), upstream(config, stage, source))


def differences(directory, keys, upstream):
  """["key: old -> new", ...] between what `directory` records and this run; none
  for a directory without a record (none yet, or written before records existed)."""
  stored = _read(directory)
  if stored is None:
    return []
  old, new = dict(stored.get("config", {})), dict(keys)
  old.update({f"upstream {k}": v for k, v in (stored.get("upstream") or {}).items()})
  new.update({f"upstream {k}": v for k, v in (upstream or {}).items()})
  for key, before in INTRODUCED.items():
    for name in (key, f"upstream {key}"):
      if (name in old) != (name in new):
        old.setdefault(name, before)
        new.setdefault(name, before)
  return [f"{k}: {_shown(old.get(k))} -> {_shown(new.get(k))}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def record(directory, stage, keys, upstream):
  """Writes (atomically) what produces this stage's results."""
  os.makedirs(directory, exist_ok=True)
  files.write_atomic(os.path.join(directory, RECORD), json.dumps(
      {"stage": stage, "config": keys, "upstream": upstream, "environment": environment()},
      indent=2, sort_keys=True))
