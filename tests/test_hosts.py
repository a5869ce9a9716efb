"""Several hosts: two processes of 4 CPU devices each, joined by jax.distributed
(gloo) as the hosts of a pod are, run the real command (tests/helpers_run.Hosts).
Every run here is bounded: a host that hangs fails the test, it never stalls CI.

- every kind of value the code moves onto the mesh arrives, from every host;
- the mini run writes the one-process report, also after one host is SIGKILLed
  and both are restarted;
- a fault on one host only ends both, in bounded time, with the same one-line
  error (SIGTERM: the same checkpointed step);
- the watchdog ends a stalled process with every thread's stack.
"""

import json
import os
import re
import shutil
import sys

import pytest

from helpers_run import (MESH_2X2X2, REPO, Hosts, assert_same_report, last_line, main_command,
                         run_main)
from gvu_jax import world
from gvu_jax.infra import checkpoint, hosts

HERE = os.path.dirname(os.path.abspath(__file__))
BOUND_S = 420   # every two-host run ends well within this, or the test fails
# A killed host is declared dead by the coordination service after this long.
HEARTBEAT = {"GVU_HEARTBEAT_TIMEOUT_S": "15"}


def two_hosts(workdir, logs, *args, env=None, views=None):
  os.makedirs(logs, exist_ok=True)
  return Hosts(main_command(str(workdir), *MESH_2X2X2, *args), str(logs), env=env, views=views)


# --- values onto the mesh, decisions ----------------------------------------------------

@pytest.mark.slow
def test_every_kind_of_value_reaches_the_mesh_from_both_hosts(tmp_path):
  """numpy (ints, bools, floats, bfloat16, rows the mesh does not divide, scalars),
  jax.Arrays on a host's own devices (committed or not, jitted outputs, PRNG keys
  such as the evaluation's per-prompt keys), trees of them, weights, and
  global arrays resharded (a tree of them by one program); agreed() and
  check_same() answer alike on both hosts."""
  run = Hosts([sys.executable, os.path.join(HERE, "multihost_checks.py"), str(tmp_path)],
              str(tmp_path), common={"PYTHONPATH": os.pathsep.join([REPO, HERE])})
  for code, _, err in run.wait(BOUND_S):
    assert code == 0, err[-3000:]
  for host in (0, 1):
    with open(tmp_path / f"host{host}.json") as f:
      results = json.load(f)
    assert {k: v for k, v in results.items() if not v[0]} == {}
    assert len(results) == 17


def test_one_process_decides_alone():
  assert hosts.agreed("anything", lambda: 7) == 7
  hosts.check_same("prompts", ["a"])   # nothing to compare with


def test_initialize_only_when_several_processes():
  assert hosts.initialize({}) is None
  assert hosts.initialize({"TPU_WORKER_HOSTNAMES": "10.0.0.2", "SLURM_NTASKS": "1"}) is None
  assert hosts.initialize({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == {}
  assert hosts.initialize({"SLURM_NTASKS": "4"}) == {}
  assert hosts.initialize({"OMPI_COMM_WORLD_SIZE": "2"}) == {}
  assert hosts.initialize(
      {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "2",
       "JAX_PROCESS_ID": "1", "GVU_HEARTBEAT_TIMEOUT_S": "30"}) == dict(
           coordinator_address="10.0.0.2:1234", num_processes=2, process_id=1,
           heartbeat_timeout_seconds=30)


# --- the mini run ---------------------------------------------------------------------

@pytest.mark.slow
def test_mini_run_on_two_hosts_writes_the_one_process_report(full_run, tmp_path):
  """The mini preset end to end on a 2x2x2 mesh of 8 devices held by two processes;
  host 0 alone prints and logs."""
  results = two_hosts(tmp_path / "run", tmp_path).wait(BOUND_S)
  for code, _, err in results:
    assert code == 0, err[-3000:]
  (out0, _), (out1, _) = [(out, err) for _, out, err in results]
  assert "gvu: mesh data=2 fsdp=2 tensor=2; per device: rollout" in out0
  assert "| mean intrinsic reward |" in out0
  assert "|" not in out1 and "gvu: mesh" not in out1
  assert_same_report(tmp_path / "run", full_run[0])
  with open(tmp_path / "run" / "gvu" / "metrics.jsonl") as f, \
       open(os.path.join(full_run[0], "gvu", "metrics.jsonl")) as g:
    assert len(f.readlines()) == len(g.readlines())   # host 0 alone wrote it


@pytest.mark.slow
def test_sigkill_one_host_then_resume_writes_the_one_process_report(full_run, tmp_path):
  """Host 1 is SIGKILLed after GvU step 3's update (as a lost VM): host 0 ends on
  its own (the coordination service misses host 1's heartbeats); both restarted
  with the default mode, they skip the finished pretraining, resume GvU from step
  2's checkpoint and write the one-process report."""
  workdir = tmp_path / "run"
  _pretrained(full_run, workdir)
  killed = two_hosts(workdir, tmp_path / "killed", "--config.mode=gvu", env={
      0: HEARTBEAT, 1: {**HEARTBEAT, "GVU_FAULT": "update:3"}}).wait(BOUND_S)
  assert killed[1][0] == -9
  assert killed[0][0] not in (0, None), killed[0][2][-2000:]   # ended, not hung
  resumed = two_hosts(workdir, tmp_path / "resumed").wait(BOUND_S)
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  assert "gvu: resuming from step 2" in resumed[0][1]
  assert_same_report(workdir, full_run[0])


# --- a fault on one host ------------------------------------------------------------------

def _pretrained(full_run, workdir):
  """A workdir holding the finished mini pretraining (GvU then starts from it)."""
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(workdir, "pretrain"))


def _damaged_copy(full_run, tmp_path):
  """The pretraining checkpoints with every array file cut in half."""
  damaged = tmp_path / "damaged"
  shutil.copytree(os.path.join(full_run[0], "pretrain", "checkpoints"), damaged)
  for path in damaged.rglob("*"):
    if path.is_file() and path.parent.name == "d":
      data = path.read_bytes()
      path.write_bytes(data[:len(data) // 2])
  return damaged


def _prompt_file(path, lines):
  path.write_bytes(lines)
  return path


WORLD_PROMPTS = "\n".join(s.text for s in world.all_specs()[:2]).encode() + b"\n"


def _missing_checkpoint(full_run, tmp_path, workdir):
  _pretrained(full_run, workdir)
  (tmp_path / "empty").mkdir()
  return ["--config.mode=gvu"], {1: {workdir / "pretrain" / "checkpoints": tmp_path / "empty"}}


def _damaged_checkpoint(full_run, tmp_path, workdir):
  _pretrained(full_run, workdir)
  return ["--config.mode=gvu"], {1: {workdir / "pretrain" / "checkpoints":
                                     _damaged_copy(full_run, tmp_path)}}


def _prompts_on_host_1(content):
  def setup(full_run, tmp_path, workdir):
    del full_run
    prompts = _prompt_file(tmp_path / "prompts.txt", WORLD_PROMPTS)
    other = _prompt_file(tmp_path / "other.txt", content)
    return [f"--config.eval.prompts={prompts}"], {1: {prompts: other}}
  return setup


def _gvu_from_pretraining(*args):
  def setup(full_run, tmp_path, workdir):
    _pretrained(full_run, workdir)
    return ["--config.mode=gvu", *args], None
  return setup


def _pretraining(full_run, tmp_path, workdir):
  return ["--config.mode=pretrain"], None


# (name, setup -> (args, views), host 1's GVU_FAULT, exit status of both, last line)
FAULTS = [
    ("missing checkpoint on host 1", _missing_checkpoint, None, 2,
     r"error: host 1: \S+/pretrain/checkpoints/30: cannot read this checkpoint"),
    ("damaged checkpoint on host 1", _damaged_checkpoint, None, 2,
     r"error: host 1: \S+/pretrain/checkpoints/30: cannot read this checkpoint"),
    ("unreadable prompt file on host 1", _prompts_on_host_1(b"a red \xff cube\n"), None, 2,
     r"error: host 1: \S+prompts.txt:1: not UTF-8 \(byte 0xff"),
    ("other prompts on host 1", _prompts_on_host_1(WORLD_PROMPTS[::-1].strip() + b"\n"), None,
     2, r"error: host 1: eval.prompts=\S+prompts.txt: host 1 read other contents than host 0"),
    ("exception in host 1's data thread", _pretraining, "pretrain_batch:3:RAISE", 1,
     r"error: host 1: InjectedFault: injected fault at pretrain_batch:3 \(GVU_FAULT\) "
     r"\(its traceback is in this host's log\)$"),
    ("non-finite values on host 1", _gvu_from_pretraining("--config.gvu.max_nonfinite_steps=1"),
     "advantages:1:NAN", 2, r"error: host [01]: gvu: 1 non-finite updates in a row at step 1"),
    ("host 1 stalls", _gvu_from_pretraining("--config.watchdog_s=45"), "rollout:2:STALL", 3,
     r"error: host [01]: watchdog: nothing completed for \d+ s \(watchdog_s=45; last: gvu 1/4\)"),
]


@pytest.mark.parametrize("name, setup, fault, status, line", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.slow
def test_a_fault_on_one_host_ends_both_with_the_same_line(full_run, tmp_path, name, setup,
                                                          fault, status, line):
  workdir = tmp_path / "run"
  workdir.mkdir()
  args, views = setup(full_run, tmp_path, workdir)
  results = two_hosts(workdir, tmp_path / "logs", *args, views=views,
                      env={1: {"GVU_FAULT": fault}} if fault else None).wait(BOUND_S)
  assert [code for code, _, _ in results] == [status, status], [err[-2000:] for *_, err in results]
  lines = [last_line(err) for _, _, err in results]
  assert lines[0] == lines[1]
  assert re.match(line, lines[0]), lines[0]
  if name == "host 1 stalls":   # the stalled frame is in host 1's stacks, the wait in host 0's
    assert re.search(r"line \d+ in inject\n", results[1][2]), results[1][2][-3000:]
    assert "every thread's stack follows" in results[0][2]


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_the_same_checkpointed_step(full_run, tmp_path):
  workdir = tmp_path / "run"
  _pretrained(full_run, workdir)
  results = two_hosts(workdir, tmp_path / "logs", "--config.mode=gvu",
                      env={1: {"GVU_FAULT": "update:2:TERM"}}).wait(BOUND_S)
  assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for *_, err in results]
  stopped = [re.search(r"gvu: stopped on a preemption notice after step (\d+); checkpoint "
                       r"saved, run the same command to resume", out) for _, out, _ in results]
  assert all(stopped), [out[-2000:] for _, out, _ in results]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step and step >= 2
  store = checkpoint.CheckpointStore(workdir / "gvu" / "checkpoints", 2)
  assert store.latest_step() == step
  store.close()


# --- the watchdog -------------------------------------------------------------------

@pytest.mark.slow
def test_watchdog_ends_a_stalled_step_with_every_threads_stack(full_run, tmp_path):
  """One process, a GvU step that never ends (GVU_FAULT=rollout:2:STALL)."""
  _pretrained(full_run, tmp_path)
  proc = run_main(str(tmp_path), "--config.mode=gvu", "--config.watchdog_s=20", check=False,
                  env={"GVU_FAULT": "rollout:2:STALL"})
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert re.search(r"watchdog: nothing completed for \d+ s \(watchdog_s=20; last: gvu 1/4\); "
                   r"stopped so that it can be restarted; every thread's stack follows",
                   proc.stderr)
  assert re.search(r"line \d+ in inject\n.*\n.*line \d+ in run", proc.stderr), proc.stderr[-3000:]
  assert last_line(proc.stderr).startswith("error: watchdog: nothing completed for")
