"""Running the real command line (python -m gvu_jax.main) from tests."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = "--config=configs/synthetic.py:mini"


def main_command(workdir, *args):
  return [sys.executable, "-m", "gvu_jax.main", MINI, f"--workdir={workdir}", *args]


def main_env(devices=None, **extra):
  """The environment of a run; `devices`: that many fake CPU devices."""
  env = dict(os.environ, **extra)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run_main(workdir, *args, check=True, devices=None):
  """The mini preset in `workdir`."""
  proc = subprocess.run(main_command(workdir, *args), cwd=REPO, capture_output=True, text=True,
                        env=main_env(devices))
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc
