"""The hosts of a run: one process per TPU VM of a pod slice, per GPU node, or
several processes on one machine, all running the same command.

A collective (every jitted step of a sharded model, a checkpoint save) waits for
every host. A host that decides differently, or fails alone, leaves the others
waiting for it, billed and silent. Three rules keep them together
(docs/reliability.md, "Several hosts"):

  one decision: a choice that decides whether a host enters a collective (resume
      from which step, is a stage finished, which prompts are left) is host 0's,
      sent to all (`agreed`), or computed from values every host holds alike;
  one error: the first host to fail publishes its one-line error; every other
      host prints the same line and exits with the same status at once
      (`end`, and the monitor thread), instead of waiting in a collective for
      a host that is gone;
  a watchdog: when nothing completes for `watchdog_s` seconds (a step, an
      evaluation batch, a phase), every thread's stack goes to stderr and the
      process exits 3, so a pod launcher restarts it (`Watchdog`).

Messages travel through the key-value store of JAX's coordination service (the
one `jax.distributed.initialize` starts on host 0), not through device
collectives: they reach a host whose devices are stuck in one. On one host all
of this reduces to a plain call. CPU processes (gloo) also connect every group of
devices up front (`connect`).
"""

import atexit
import faulthandler
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import threading
import time

import jax
import numpy as np

from gvu_jax.infra import files
from gvu_jax.infra.errors import InputError

ERROR_KEY = "gvu_jax/error"
LEFT_KEY = "gvu_jax/left/"
DECISION_KEY = "gvu_jax/decision/"
POLL_S = 1.0
DECISION_TIMEOUT_S = 3600   # host 0 may read a long listing or prepare a dataset first
STALLED = 3                 # exit status of a process the watchdog ended
# Where the ending line and the stacks go: the process's stderr as it started (a
# checkpoint read holds fd 2 back while it runs; checkpoint._one_line_errors).
_STDERR = os.fdopen(os.dup(2), "w", buffering=1)


def count():
  return jax.process_count()


def index():
  return jax.process_index()


def is_main():
  return jax.process_index() == 0


def initialize(environ=None):
  """jax.distributed.initialize() when this process is one of several; a no-op on
  one host. Must run before anything touches a device. Returns the arguments it
  passed (None: not distributed).

  A TPU pod slice, SLURM and Open MPI are detected by JAX itself. By hand (any
  cluster, or several processes on one machine): JAX_COORDINATOR_ADDRESS=host:port,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process. GVU_HEARTBEAT_TIMEOUT_S
  (default JAX's 100): how long the coordination service waits for a silent
  host before it ends every other one.
  """
  env = os.environ if environ is None else environ
  several = lambda key: int(env.get(key, "1") or "1") > 1
  if env.get("JAX_COORDINATOR_ADDRESS"):
    args = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
                process_id=int(env.get("JAX_PROCESS_ID", "0")))
  elif (len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
        or several("SLURM_NTASKS") or several("OMPI_COMM_WORLD_SIZE")):
    args = {}
  else:
    return None
  if env.get("GVU_HEARTBEAT_TIMEOUT_S"):
    args["heartbeat_timeout_seconds"] = int(env["GVU_HEARTBEAT_TIMEOUT_S"])
  if environ is None:
    if env.get("JAX_COORDINATOR_ADDRESS"):   # CPU processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    _MONITOR.start()
  return args


def connect(mesh):
  """CPU processes (gloo): connects now, while the hosts are together, every group
  of devices a collective over some of the mesh's axes spans. Gloo connects a
  group at its first collective and fails when one host comes more than 30 s
  after another (XLA's deadline for the rendezvous); under CPU contention a host
  compiling a program the other already has is that late, and runs failed with
  "Gloo context initialization failed" or hung. Every group is connected here,
  after a barrier, by a psum over each set of axes. Nothing to do on one host,
  nor on TPUs and GPUs, whose collectives do not go through gloo."""
  if count() == 1 or mesh.devices.flat[0].platform != "cpu":
    return
  from jax.sharding import NamedSharding, PartitionSpec as P
  names, shape = mesh.axis_names, mesh.devices.shape
  spec = P(*names)
  ones = jax.make_array_from_callback(shape, NamedSharding(mesh, spec),
                                      lambda index: np.ones(shape, np.float32)[index])
  programs = []
  for size in range(1, len(names) + 1):
    for axes in itertools.combinations(names, size):
      if math.prod(mesh.shape[a] for a in axes) > 1:
        total = jax.shard_map(functools.partial(jax.lax.psum, axis_name=axes), mesh=mesh,
                              in_specs=spec, out_specs=spec)
        programs.append(jax.jit(total).lower(ones).compile())   # (compiled before the barrier)
  _client().wait_at_barrier("gvu_jax/connect", DECISION_TIMEOUT_S * 1000)
  for program in programs:
    jax.block_until_ready(program(ones))


def _client():
  from jax._src import distributed   # the coordination service's client (no public name)
  return distributed.global_state.client


# --- one decision ------------------------------------------------------------------

_decisions = [0]


def agreed(name, compute):
  """compute() on host 0, its result (JSON) on every host: the value a branch that
  decides whether hosts enter a collective must read. Every host calls it at the
  same point of the program (the calls are numbered). An InputError raised by
  compute() on host 0 is raised on every host, with the same line."""
  if count() == 1:
    return compute()
  _decisions[0] += 1
  key = f"{DECISION_KEY}{_decisions[0]}:{name}"
  if is_main():
    try:
      value = compute()
    except InputError as e:
      _client().key_value_set(key, json.dumps({"error": str(e)}))
      raise
    _client().key_value_set(key, json.dumps({"value": value}))
    return value
  record = json.loads(_client().blocking_key_value_get(key, DECISION_TIMEOUT_S * 1000))
  if "error" in record:
    raise InputError(record["error"])
  return record["value"]


def digest(value):
  """A short hash of a JSON-able value (e.g. the prompts a host read)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def check_same(what, value):
  """Every host must hold the same `value` (JSON-able; e.g. the prompts it read
  from a file each host reads itself): one line naming `what` on the host that
  differs from host 0 (which then ends every host) if not."""
  if count() == 1:
    return
  mine = digest(value)
  theirs = agreed(f"same:{what}", lambda: mine)
  if mine != theirs:
    raise InputError(f"{what}: host {index()} read other contents than host 0 (digest "
                     f"{mine} vs {theirs}); every host must see the same file")


# --- one error -------------------------------------------------------------------

def from_this_host(message):
  """`message`, naming this host when there are several."""
  return f"host {index()}: {message}" if count() > 1 else message


_ending = threading.Lock()


def end(message, code, stacks=False):
  """This process stops with `message` (one line) and exit status `code`: prints
  the line every host ends with (the first host to fail decides it) and exits.
  On several hosts the others are told, and end with the same line and status;
  with `stacks` they first print every thread's stack (a watchdog's end)."""
  if not _ending.acquire(blocking=False):   # another thread is ending the process
    time.sleep(3600)
  if count() > 1:
    record = {"host": index(), "message": message, "code": code, "stacks": stacks}
    try:
      _client().key_value_set(ERROR_KEY, json.dumps(record))
    except Exception:  # noqa: BLE001 - another host failed first: end with its line
      try:
        record = json.loads(_client().key_value_try_get(ERROR_KEY))
      except Exception:  # noqa: BLE001 - the coordination service itself is gone
        pass
    message, code = record["message"], record["code"]
  _leave(f"error: {message}", code)


def _leave(line, code):
  """Prints `line` last on stderr and exits with `code`, without interpreter
  shutdown. Host 0 runs the coordination service: it leaves after the others (or
  10 s), whose clients would otherwise abort with a native stack trace when it
  disappears; its line comes after that wait, so nothing its other threads print
  meanwhile follows it."""
  if count() > 1:
    client = _client()
    try:
      if is_main():
        deadline = time.monotonic() + 10
        for host in range(1, count()):
          client.blocking_key_value_get(f"{LEFT_KEY}{host}",
                                        max(1, int(1000 * (deadline - time.monotonic()))))
        time.sleep(0.5)   # their os._exit
    except Exception:  # noqa: BLE001 - a host that is gone does not answer
      pass
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  print(line, file=_STDERR, flush=True)
  if count() > 1 and not is_main():
    try:
      _client().key_value_set(f"{LEFT_KEY}{index()}", "1")
    except Exception:  # noqa: BLE001 - host 0 is gone already
      pass
  files.release_workdirs()
  os._exit(code)


def dump_stacks(reason):
  """Every thread's Python stack to stderr, after a line saying why."""
  print(from_this_host(f"{reason}; every thread's stack follows"), file=_STDERR, flush=True)
  faulthandler.dump_traceback(file=_STDERR, all_threads=True)
  _STDERR.flush()


# --- the watchdog and the monitor thread ------------------------------------------------

COMPILED = "/jax/core/compile/backend_compile_duration"   # (jax's event: XLA compiled a program)


class Watchdog:
  """Ends the process (exit status 3, every thread's stack first) when `alive()`
  has not been called for `seconds` (0: off). `alive(what)` is called where work
  completes: a training step, an evaluation batch, a checkpoint read or written,
  a program compiled, a phase's start."""

  def __init__(self):
    self.seconds, self.last, self.what = 0, time.monotonic(), "start"
    self.listening = False

  def start(self, seconds):
    self.seconds = seconds
    self.alive("start")
    if seconds:
      if not self.listening:   # a compilation finished: progress, however long it took
        jax.monitoring.register_event_duration_secs_listener(
            lambda event, duration, **_: event == COMPILED and self.alive("compiled a program"))
        self.listening = True
      _MONITOR.start()

  def alive(self, what):
    self.last, self.what = time.monotonic(), what

  def stalled(self):
    """The watchdog's message once `seconds` have passed without progress, else None."""
    idle = time.monotonic() - self.last
    if self.seconds and idle > self.seconds:
      return (f"watchdog: nothing completed for {idle:.0f} s (watchdog_s={self.seconds}; "
              f"last: {self.what}); stopped so that it can be restarted")
    return None


WATCHDOG = Watchdog()


def alive(what):
  WATCHDOG.alive(what)


def watchdog_seconds(configured):
  """config.watchdog_s as the run uses it: -1 (the default) is 1800 s on several
  hosts, off on one; 0 is off."""
  if configured == -1:
    return 1800 if count() > 1 else 0
  return configured


class _Monitor:
  """One daemon thread per process, once started: every POLL_S it looks for another
  host's error (several hosts) and asks the watchdog."""

  def __init__(self):
    self.thread, self.stop = None, threading.Event()

  def start(self):
    if self.thread is None:
      self.thread = threading.Thread(target=self._run, name="gvu_jax-hosts", daemon=True)
      self.thread.start()
      atexit.register(self.close)   # runs before jax.distributed's own shutdown (LIFO)

  def close(self):
    self.stop.set()
    if self.thread is not None:
      self.thread.join(timeout=5)

  def _run(self):
    while not self.stop.wait(POLL_S):
      stalled = WATCHDOG.stalled()
      if stalled:
        dump_stacks(stalled)
        end(from_this_host(stalled), STALLED, stacks=True)
      if count() > 1:
        self._other_hosts()

  def _other_hosts(self):
    try:
      record = json.loads(_client().key_value_try_get(ERROR_KEY))
    except Exception:  # noqa: BLE001 - NOT_FOUND: no host failed
      return
    if record["host"] == index() or not _ending.acquire(blocking=False):
      return   # this host's own error: its main thread is ending
    if record["stacks"]:
      dump_stacks(f"host {record['host']} stopped: {record['message']}")
    _leave(f"error: {record['message']}", record["code"])


_MONITOR = _Monitor()
