"""The optimizer of both stages (gvu_jax/rl/optimizer.py): global-norm clipping before
AdamW, warmup, and schedules sized in optimizer updates as transformers sizes them."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gvu_jax.infra.errors import InputError
from gvu_jax.rl import optimizer


def opt_config(**kw):
  c = dict(lr=0.1, warmup_steps=1, schedule="constant", weight_decay=0.0, max_grad_norm=1.0,
           adam_b1=0.9, adam_b2=0.95, adam_eps=1e-8)
  return ml_collections.ConfigDict(dict(c, **kw))


def updates_of(tx, grads_seq, params):
  """The updates tx makes for a sequence of gradients (one compilation)."""
  @jax.jit
  def run(grads_seq):
    state, out = tx.init(params), []
    for g in grads_seq:
      u, state = tx.update(g, state, params)
      out.append(u)
    return out
  return run(grads_seq)


def test_optimizer_clips_global_norm_before_adam():
  params = {"w": jnp.zeros(4), "b": jnp.zeros(2)}
  grads = {"w": jnp.array([3.0, -4.0, 1.0, 2.0]), "b": jnp.array([-1.0, 5.0])}
  # Adam is scale-free, except for its eps (1e-8): a gradient clipped to a
  # global norm of 1e-12 moves the weights by ~1e-4 lr, an unclipped one by ~lr.
  lr = 0.1
  tiny = updates_of(optimizer.make_optimizer(opt_config(lr=lr, max_grad_norm=1e-12), 10)[0],
                    [grads] * 3, params)
  free = updates_of(optimizer.make_optimizer(opt_config(lr=lr, max_grad_norm=1e12), 10)[0],
                    [grads] * 3, params)
  big = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(free[-1]))
  small = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tiny[-1]))
  assert 0.5 * lr < big <= 1.01 * lr
  assert 0 < small < 1e-3 * lr


def test_optimizer_linear_warmup():
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([1.0, -2.0, 3.0])}   # constant: Adam steps by ~lr_t per element
  ups = updates_of(optimizer.make_optimizer(opt_config(warmup_steps=2), 100)[0], [grads] * 4, params)
  np.testing.assert_allclose([float(np.abs(u["w"]).max()) for u in ups],
                             [0.0, 0.05, 0.1, 0.1], rtol=1e-3)


def test_optimizer_unknown_schedule_raises():
  with pytest.raises(InputError, match="schedule"):
    optimizer.make_optimizer(opt_config(schedule="step"), 10)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_optimizer_without_warmup_uses_lr_from_the_first_step(schedule):
  params = {"w": jnp.zeros(3)}
  first = updates_of(optimizer.make_optimizer(opt_config(warmup_steps=0, schedule=schedule), 100)[0],
                     [{"w": jnp.array([1.0, -2.0, 3.0])}], params)[0]
  np.testing.assert_allclose(np.abs(first["w"]), 0.1, rtol=1e-3)


@pytest.mark.parametrize("mu", [1, 2])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_is_sized_in_optimizer_updates_as_transformers_does(schedule, mu):
  """steps x mu updates with warmup over warmup_steps x mu, each update's learning
  rate as transformers' scheduler (the reference's Trainer) gives it: warmup ends
  where the config says and the last update still moves."""
  import torch
  from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
  steps, warmup = 12, 3
  ours = optimizer.make_schedule(opt_config(lr=0.1, warmup_steps=warmup, schedule=schedule), steps,
                          updates_per_step=mu)
  make = {"linear": get_linear_schedule_with_warmup,
          "cosine": get_cosine_schedule_with_warmup}[schedule]
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
  theirs = make(opt, num_warmup_steps=warmup * mu, num_training_steps=steps * mu)
  expected = []
  for _ in range(steps * mu):
    expected.append(theirs.get_last_lr()[0])
    opt.step()
    theirs.step()
  got = [float(ours(k)) for k in range(steps * mu)]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
  assert got[warmup * mu] == pytest.approx(0.1) and got[warmup * mu - 1] < 0.1
  assert got[-1] > 0


def test_lr_metric_is_what_the_optimizer_applies():
  """rl.learning_rate reads the optimizer's own update count: Adam with a
  constant gradient moves each weight by about the scheduled rate."""
  c = opt_config(lr=0.1, warmup_steps=2, schedule="linear")
  tx, schedule = optimizer.make_optimizer(c, 6)
  params, grads = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  for k in range(6):
    lr = float(optimizer.learning_rate(schedule, state))
    assert lr == pytest.approx(float(schedule(k)))
    update, state = tx.update(grads, state, params)
    np.testing.assert_allclose(np.abs(update["w"]), lr, rtol=1e-3, atol=1e-7)
