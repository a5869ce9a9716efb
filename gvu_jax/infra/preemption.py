"""Stopping cleanly when the machine is taken away.

A preemptible TPU VM or a cluster scheduler sends SIGTERM some seconds before
it kills the process. Training loops ask `stop_requested(step)` after every
step: once SIGTERM (or SIGINT) has arrived, the loop writes a checkpoint of the
step it just finished and raises `Preempted`; the entry point then exits 0, and
the same command resumes from that checkpoint.

On several hosts every host must stop at the same step (a checkpoint is a
collective write): there JAX's own preemption notifier (set up by
`jax.distributed.initialize`) catches the signal and its sync point agrees on the
step; on one host a Python handler remembers the signal.
"""

import contextlib
import os
import signal
import sys

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after writing a checkpoint; rerun to resume."""


_received = []


def _remember(signum, frame):
  """The first signal is remembered (the loop stops after its step); a second
  one ends the process at once, as the signal would have."""
  del frame
  if _received:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  _received.append(signum)
  print(f"{signal.Signals(signum).name}: stopping after the current training step, with a "
        "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def watching():
  """Within this block a first SIGTERM or SIGINT is remembered instead of ending
  the process (the main thread only: signal handlers live there). Training loops
  stop after their step (stop_requested); evaluation after its batch
  (stop_evaluation)."""
  if jax.process_count() > 1:   # JAX's notifier handles it (see above)
    yield
    return
  previous = {s: signal.signal(s, _remember) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _received.clear()


def stop_requested(step):
  """True once the run should stop after `step` (the same answer on every host)."""
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(step)
  return bool(_received)


def stop_evaluation(stage):
  """Evaluation has no checkpoint to write: once a signal has arrived it stops
  after the batch in flight (a rerun evaluates again; an export resumes where it
  stopped). On several hosts a second signal stops it (see above)."""
  if jax.process_count() == 1 and _received:
    raise Preempted(f"{stage}: stopped on {signal.Signals(_received[0]).name}; run the same "
                    "command to resume")


def stop(stage, step, store, bar):
  """Ends a loop whose checkpoint of `step` has just been written."""
  bar.close()
  store.close()   # waits for the asynchronous save
  what = signal.Signals(_received[0]).name if _received else "a preemption notice"
  raise Preempted(f"{stage}: stopped on {what} after step {step}; checkpoint saved, run "
                  "the same command to resume")
