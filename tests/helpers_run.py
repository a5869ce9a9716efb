"""Running the real command line (python -m gvu_jax.main) from tests."""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = "--config=configs/synthetic.py:mini"


def recipe_config(name, preset=None):
  """configs/<name>.py's get_config(preset), as the command line would load it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  return recipe.get_config(preset)


def main_command(workdir, *args):
  return [sys.executable, "-m", "gvu_jax.main", MINI, f"--workdir={workdir}", *args]


def main_env(devices=None, **extra):
  """The environment of a run; `devices`: that many fake CPU devices."""
  env = dict(os.environ, **extra)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run_main(workdir, *args, check=True, devices=None, env=None):
  """The mini preset in `workdir`."""
  proc = subprocess.run(main_command(workdir, *args), cwd=REPO, capture_output=True, text=True,
                        env=main_env(devices, **(env or {})))
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def recipe_command(config, checkpoint, prompts, workdir, *extra):
  """GvU for 2 steps of 2 prompts on a tiny converted checkpoint, in float32."""
  return [sys.executable, "-m", "gvu_jax.main", f"--config={config}",
          f"--config.checkpoint={checkpoint}", "--config.expect_model=any",
          f"--config.data.prompts={prompts}", "--config.gvu.steps=2",
          "--config.gvu.prompts_per_step=2", "--config.model_options.max_prompt_tokens=4",
          "--config.model_options.dtype=float32", f"--workdir={workdir}", *extra]


def run_two_gvu_steps(args, workdir):
  """Runs `recipe_command(...)`; checks both steps logged a reward in (0, 1] and a
  finite loss."""
  import json
  import math
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
  if proc.returncode != 0:
    raise AssertionError(proc.stderr[-3000:])
  with open(os.path.join(workdir, "gvu", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(0 < r["reward_mean"] <= 1 and math.isfinite(r["loss"]) for r in rows)
  return proc
