"""The optimizer of both training stages: AdamW after global-norm clipping, on a
learning-rate schedule sized in optimizer updates (steps x updates per step)."""

import jax
import jax.numpy as jnp
import optax

from gvu_jax.infra.errors import InputError


SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(c, steps, updates_per_step=1):
  """The learning rate of optimizer update k (k = 0, 1, ...): linear warmup from 0
  over `c.warmup_steps` steps, then constant, cosine decay or linear decay to 0
  (transformers' `get_linear_schedule_with_warmup`). Sized in updates: a stage of
  `steps` steps of `updates_per_step` updates each (GvU's mu) makes
  steps x updates_per_step updates, and warmup ends after warmup_steps steps."""
  if c.schedule not in SCHEDULES:
    raise InputError(f"schedule: unknown {c.schedule!r}; expected one of {list(SCHEDULES)}")
  total, warmup = steps * updates_per_step, c.warmup_steps * updates_per_step
  decay_updates = max(total - warmup, 1)
  schedule = {"constant": lambda: optax.constant_schedule(c.lr),
              "cosine": lambda: optax.cosine_decay_schedule(c.lr, decay_updates),
              "linear": lambda: optax.linear_schedule(c.lr, 0.0, decay_updates)}[c.schedule]()
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, c.lr, warmup), schedule], [warmup])
  return schedule


def make_optimizer(c, steps, updates_per_step=1):
  """AdamW (c.adam_b1, c.adam_b2, c.adam_eps, c.weight_decay) after global-norm
  clipping, on make_schedule's learning rate -> (optax transform, schedule)."""
  schedule = make_schedule(c, steps, updates_per_step)
  tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm),
                   optax.adamw(schedule, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps,
                               weight_decay=c.weight_decay))
  return tx, schedule


def learning_rate(schedule, opt_state):
  """The learning rate the next update applies: the schedule at the optimizer's
  own update count (which a skipped, non-finite update does not advance)."""
  is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)
  (count,) = [x.count for x in jax.tree.leaves(opt_state, is_leaf=is_count) if is_count(x)]
  return jnp.asarray(schedule(count), jnp.float32)
