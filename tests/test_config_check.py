"""The whole config checked once, up front (gvu_jax/stages/config_check.py): every key of
every recipe has a rule, every rule refuses what it must at its boundaries, and
a bad value is one line naming the key before anything runs or is written."""

import math
import os
import subprocess
import sys

import ml_collections
import pytest

from gvu_jax.infra.errors import InputError
from gvu_jax.stages import config_check
from helpers_run import REPO, recipe_config

RECIPES = [("synthetic", "default"), ("synthetic", "mini"), ("janus_pro_7b", "lora"),
           ("janus_pro_7b", "t2i_r1"), ("janus_pro_7b", "small"), ("janus_pro_1b", "lora"),
           ("janus_pro_1b", "device_check"),
           ("xomni_en", None)]


def with_value(config, key, value):
  c = ml_collections.ConfigDict(config.to_dict())
  node = c
  *path, leaf = key.split(".")
  for part in path:
    node = node[part]
  with c.ignore_type():
    node[leaf] = value
  return c


def refused(config, key, value):
  with pytest.raises(InputError) as e:
    config_check.check(with_value(config, key, value))
  message = str(e.value)
  assert message.startswith(f"{key}=") and "\n" not in message, message
  return message


@pytest.mark.parametrize("name, preset", RECIPES)
def test_every_recipe_passes_and_every_key_has_a_rule(name, preset):
  config = recipe_config(name, preset)
  config_check.check(config)
  for key in config_check.flatten(config):
    assert key in config_check.RULES or key.startswith("model."), key


def boundary_cases():
  """(key, value) pairs each key's rule must refuse, from the rule itself: below
  its range, not finite, the wrong type."""
  config = recipe_config("synthetic", "default")
  cases = []
  for key, value in config_check.flatten(config).items():
    rule = config_check.RULES.get(key)
    if rule is None:
      continue
    if isinstance(value, bool):
      cases += [(key, "yes"), (key, 1)]
    elif isinstance(value, int):
      cases += [(key, rule.lowest - 1), (key, 2.5), (key, "3"), (key, True), (key, math.nan)]
      if key.startswith("mesh."):
        cases.append((key, 0))
    elif isinstance(value, float):
      cases += [(key, math.nan), (key, math.inf), (key, -math.inf), (key, "0.1"), (key, None)]
    elif isinstance(value, str) and key not in ("data.tfds_dir", "data.manual_dir",
                                                "eval.prompts", "data.prompts",
                                                "logging.wandb_project",
                                                "logging.wandb_entity"):
      cases += [(key, "no_such_choice"), (key, 3)]
  return cases


@pytest.mark.parametrize("key, value", boundary_cases())
def test_a_value_outside_its_rule_is_one_line_naming_the_key(key, value):
  refused(recipe_config("synthetic", "default"), key, value)


@pytest.mark.parametrize("key, value, expected", [
    # the cases a hostile-input probe found, each once refused too late or not at all
    ("gvu.group_size", 1, "gvu.group_size=1: expected an integer >= 2"),
    ("gvu.prompts_per_step", 0, "gvu.prompts_per_step=0: expected an integer >= 1"),
    ("gvu.grad_accum", 0, "gvu.grad_accum=0: expected an integer >= 1"),
    ("gvu.mu", 0, "gvu.mu=0: expected an integer >= 1"),
    ("gvu.checkpoint_every", 0, "gvu.checkpoint_every=0: expected an integer >= 1"),
    ("eval.batch_size", 0, "eval.batch_size=0: expected an integer >= 1"),
    ("model.dtype", "float8", "model.dtype='float8': expected one of ['float32', 'bfloat16'"),
    ("seed", 10**19, "seed=10000000000000000000: expected an integer in [0, 2147483647]"),
    ("gvu.lr", math.nan, "gvu.lr=nan: expected a finite number > 0"),
    ("gvu.sampling.cfg_weight", math.nan, "gvu.sampling.cfg_weight=nan: expected a finite number"),
    ("gvu.keep", 0, "gvu.keep=0: expected an integer >= 1"),
    ("pretrain.batch_size", 0, "pretrain.batch_size=0: expected an integer >= 1"),
    ("pretrain.t2i_mislabel", 1.0, "pretrain.t2i_mislabel=1.0: expected a finite number in [0, 1)"),
    ("gvu.grad_accum", 3, "gvu.grad_accum=3: expected a divisor of the rollout's 128 rows"),
    ("gvu.grad_accum", 16, "gvu.grad_accum=16: expected a divisor of gvu.prompts_per_step=8 "
     "(with gvu.shared_prompt_pass each micro-batch holds whole groups)"),
    ("data.gvu_fraction", 0.8, "data.gvu_fraction=0.8: expected below 1 - data.heldout_fraction"),
    ("gvu.lora.targets", ("q", "qkv"), "gvu.lora.targets=('q', 'qkv'): expected a tuple of names"),
    ("reward.token_weights", {"a": math.nan}, "reward.token_weights={'a': nan}: expected a dict"),
    ("model.lm.heads", 3, "model.lm.heads=3: expected a divisor of model.lm.hidden=128"),
    ("profile.steps", (3,), "profile.steps=(3,): expected () (off) or (START, END)"),
    ("profile.steps", (0, 2), "profile.steps=(0, 2): expected () (off) or (START, END)"),
    ("profile.steps", (2, 2.5), "profile.steps=(2, 2.5): expected () (off) or (START, END)"),
    ("profile.steps", "2,3", "profile.steps='2,3': expected () (off) or (START, END)"),
    ("profile.steps", (5, 3), "profile.steps=(5, 3): expected START <= END"),
])
def test_the_cases_found_by_the_probe(key, value, expected):
  assert expected in refused(recipe_config("synthetic", "default"), key, value)


@pytest.mark.parametrize("name, preset, key, value", [
    ("janus_pro_7b", "lora", "model_options.dtype", "fp8"),
    ("janus_pro_7b", "lora", "model_options.attention", "flash"),
    ("xomni_en", None, "model_options.image_grid", (36, 0)),
    ("janus_pro_7b", "small", "bench.machine", "tpu9"),
    ("janus_pro_7b", "lora", "eval.layout", "coco"),
    ("janus_pro_7b", "lora", "eval.understanding", "pope,mmmu"),
    ("janus_pro_1b", None, "eval.understanding", ["pope"]),
    ("janus_pro_7b", "lora", "eval.understanding_protocol", "lmms_eval"),
    ("xomni_en", None, "eval.understanding_answers", "beam"),
    ("janus_pro_1b", None, "eval.reply_tokens", 0),
    ("janus_pro_7b", "t2i_r1", "gvu.full_ft_modules", "lm"),
    ("xomni_en", None, "profile.steps", (1, 2, 3)),
    ("janus_pro_1b", None, "reward.kind", "judge"),   # the judge is the embedded world's
    ("xomni_en", None, "reward.kind", "judge"),
])
def test_release_recipes_are_checked_too(name, preset, key, value):
  refused(recipe_config(name, preset), key, value)


def test_an_unknown_key_in_a_recipe_is_refused():
  config = recipe_config("synthetic", "mini")
  config.gvu.lerning_rate = 1e-3
  with pytest.raises(InputError, match="gvu.lerning_rate: not a setting gvu_jax knows"):
    config_check.check(config)


@pytest.mark.parametrize("flag, expected", [
    ("--config.gvu.group_size=1", "gvu.group_size=1: expected an integer >= 2"),
    ("--config.pretrain.batch_size=0", "pretrain.batch_size=0: expected an integer >= 1"),
    ("--config.gvu.lr=nan", "gvu.lr=nan: expected a finite number > 0"),
])
@pytest.mark.slow
def test_refused_before_anything_is_written(tmp_path, flag, expected):
  """Through the command line: one line, exit 2, and not even the workdir made
  (pretrain.batch_size=0 once hung in the batch thread; group_size=1 was refused
  only after pretraining)."""
  workdir = tmp_path / "never"
  proc = subprocess.run([sys.executable, "-m", "gvu_jax.main", "--config=configs/synthetic.py",
                         f"--workdir={workdir}", flag], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip() == f"error: {expected}", proc.stderr
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/synthetic.py:mini", "--config.gvu.steps=7"], "  steps: 7"),
    (["--config=configs/janus_pro_1b.py:t2i_r1", "--config.profile.steps=2,3"],
     "profile:\n  steps: !!python/tuple\n  - 2\n  - 3"),
])
@pytest.mark.slow
def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, args, expected):
  proc = subprocess.run([sys.executable, "-m", "gvu_jax.main", *args, "--print_config",
                         f"--workdir={tmp_path / 'never'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and expected in proc.stdout, proc.stdout + proc.stderr
  assert "mode:" in proc.stdout and not (tmp_path / "never").exists()
  bad = subprocess.run([sys.executable, "-m", "gvu_jax.main", "--config=configs/nope.py",
                        "--print_config"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
