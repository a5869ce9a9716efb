"""Running the real command line (python -m gvu_jax.main) from tests."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = "--config=configs/synthetic.py:mini"


def run_main(workdir, *args, check=True, devices=None):
  """The mini preset in `workdir`; `devices`: that many fake CPU devices."""
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run([sys.executable, "-m", "gvu_jax.main", MINI, f"--workdir={workdir}",
                         *args], cwd=REPO, capture_output=True, text=True, env=env)
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc
