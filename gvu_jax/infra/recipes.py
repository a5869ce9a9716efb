"""What the recipe files (configs/*.py) share: the blocks every recipe holds with
the same defaults, and reading one recipe file from another."""

import importlib.util
import os

# Several hosts (docs/reliability.md): a process that completes nothing (a step, an
# evaluation batch, a phase) for watchdog_s seconds prints every thread's stack and
# exits 3, for the launcher to restart it. -1: 1800 s on several hosts, off on one;
# 0: off.
WATCHDOG_S = -1


def reward():
  """The `reward` block: GvU's intrinsic reward (docs/design.md §2)."""
  return dict(kind="intrinsic",             # intrinsic | shuffled | judge (control runs)
              aggregation="geo_mean_prob",  # geo_mean_prob | prob | mean_logprob | weighted
              judge="policy",               # policy | reference
              token_weights={},             # word -> weight, for `weighted`
              quantize_pixels=True)         # score the 8-bit image (False: raw floats)


def profile():
  """(START, END): a jax.profiler trace of GvU steps START..END in WORKDIR/profile
  (TensorBoard's profile plugin or XProf reads it); () = off."""
  return dict(steps=())


def logging():
  """Metrics go to STAGE/metrics.jsonl, and to TensorBoard (WORKDIR/tensorboard) and
  Weights & Biases (a project name turns it on; pip install 'gvu_jax[wandb]')."""
  return dict(tensorboard=True, wandb_project="", wandb_entity="")


def load(path):
  """The recipe file at `path`, as a module (its get_config(preset) gives the
  config the command line would load)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  return recipe


def sibling(recipe_file, name):
  """The recipe file `name`.py beside `recipe_file`, as a module (a recipe built
  on another one: configs/janus_pro_1b.py on configs/janus_pro_7b.py)."""
  return load(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), f"{name}.py"))
