"""Fault injection for the reliability tests (docs/reliability.md).

With GVU_FAULT=<point>:<step>[:<action>] in a process's environment, the process
fails at that point of the program as a real fault would; on several hosts the
tests set it on one host only. Nothing happens unless the variable names the
point and step. Actions:

  KILL   SIGKILL, as a lost machine (the default)
  TERM   SIGTERM, as a preemption notice
  RAISE  an exception, as a bug or a failed read would raise
  STALL  sleeps forever, as a hung step or a stuck filesystem (the watchdog's case)
  NAN    (at `poisoned` points) the part of an array this host's devices hold
         becomes NaN, as from a faulty chip

Points: "rollout" and "update" (after a GvU step's rollout, after its update),
"pretrain_batch" (pretraining's data thread, making a batch), "export_images"
and "export_record" (after an evaluation export's images, after its record),
"advantages" (a GvU step's advantages, for NAN).
"""

import os
import signal
import time

import numpy as np

VARIABLE = "GVU_FAULT"


class InjectedFault(RuntimeError):
  pass


def _action(point, step):
  at = os.environ.get(VARIABLE, "")
  name, _, rest = at.partition(":")
  if name != point:
    return None
  at_step, _, action = rest.partition(":")
  return action if at_step == str(step) else None


def inject(point, step):
  """Fails here if GVU_FAULT names this point and step."""
  action = _action(point, step)
  if action in ("", "KILL"):
    os.kill(os.getpid(), signal.SIGKILL)
  elif action == "TERM":
    os.kill(os.getpid(), signal.SIGTERM)
  elif action == "RAISE":
    raise InjectedFault(f"injected fault at {point}:{step} ({VARIABLE})")
  elif action == "STALL":
    while True:
      time.sleep(60)


def poisoned(point, step, x):
  """`x` (a jax.Array), with the part this host's devices hold made NaN if
  GVU_FAULT names this point and step with NAN."""
  if _action(point, step) != "NAN":
    return x
  import jax
  shards = [jax.device_put(np.full(s.data.shape, np.nan, s.data.dtype), s.device)
            for s in x.addressable_shards]
  return jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)
