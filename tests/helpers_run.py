"""Running the real command line (python -m gvu_jax.main) from tests."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = "--config=configs/synthetic.py:mini"
MESH_2X2X2 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def recipe_config(name, preset=None):
  """configs/<name>.py's get_config(preset), as the command line would load it."""
  from gvu_jax.infra import recipes
  return recipes.load(os.path.join(REPO, "configs", f"{name}.py")).get_config(preset)


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


def free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Hosts:
  """A command run as the hosts of a pod would run it: `count` processes of
  `devices` fake CPU devices each, joined by jax.distributed (gloo); every host
  gets `common` (extra environment variables). Per host:
  `env[i]`, extra environment variables; `views[i]`, {path: source} bind-mounted
  over path for that host alone (a mount namespace: its own view of the files, as
  a pod host with its own disk has). Output goes to files, not pipes: a full pipe
  would stall one host inside a collective."""

  def __init__(self, command, logs, count=2, devices=4, env=None, views=None, common=None):
    import shlex
    port = free_port()
    self.logs = [(os.path.join(logs, f"host{i}.out"), os.path.join(logs, f"host{i}.err"))
                 for i in range(count)]
    self.procs = []
    for i, (out, err) in enumerate(self.logs):
      argv = list(command)
      mounts = (views or {}).get(i) or {}
      if mounts:
        binds = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(path))}"
                            for path, src in mounts.items())
        argv = ["unshare", "--mount", "sh", "-c", f'{binds} && exec "$@"', "sh", *argv]
      with open(out, "w") as o, open(err, "w") as e:
        self.procs.append(subprocess.Popen(argv, cwd=REPO, stdout=o, stderr=e, env=main_env(
            devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(i), **(common or {}),
            **((env or {}).get(i) or {}))))

  def wait(self, timeout):
    """-> [(exit status, stdout, stderr)] per host; a host still running after
    `timeout` seconds is killed and reported with status None."""
    import time
    deadline = time.monotonic() + timeout
    out = []
    for p in self.procs:
      try:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
        code = p.returncode
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        code = None
      out.append(code)
    return [(code, open(o).read(), open(e).read()) for code, (o, e) in zip(out, self.logs)]


def last_line(text):
  lines = [l for l in text.splitlines() if l.strip()]
  return lines[-1] if lines else ""


def assert_same_report(workdir, reference_workdir):
  """report.json in `workdir` says what the one in `reference_workdir` says: every
  judged accuracy identical, the mean reward (a float sum in another order on
  another mesh) within 1e-5."""
  import json
  import pytest
  with open(os.path.join(reference_workdir, "report.json")) as f:
    one = json.load(f)
  with open(os.path.join(workdir, "report.json")) as f:
    other = json.load(f)
  assert list(other) == list(one)
  for stage in one:
    assert {k: v for k, v in other[stage].items() if k != "intrinsic_reward"} == {
        k: v for k, v in one[stage].items() if k != "intrinsic_reward"}
    assert other[stage]["intrinsic_reward"] == pytest.approx(one[stage]["intrinsic_reward"],
                                                             rel=1e-5)
