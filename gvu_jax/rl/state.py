"""The GvU update's state (docs/design.md §3): what is trained (LoRA adapters, or
fp32 master copies of the fully fine-tuned modules), its optimizer and the step
and key the jitted update carries. The GvU stage and the benchmark start here."""

import jax
import jax.numpy as jnp

from gvu_jax.models import build, lora
from gvu_jax.rl import optimizer


def lora_overrides(c):
  """The `gvu` block -> the model-definition options that add its LoRA adapters
  ({} without LoRA)."""
  if not c.lora.enabled:
    return {}
  return dict(lora_rank=c.lora.rank, lora_alpha=c.lora.alpha, lora_targets=tuple(c.lora.targets))


def init(c, model, frozen, seed, abstract=False):
  """-> (graphdef, roles, (tx, schedule), state) for the `gvu` block `c` on `model`
  whose fixed weights are `frozen`. state: {"trainable", "opt_state", "step",
  "rng"}, not yet placed on a mesh. abstract: shapes only, nothing allocated."""
  overrides = lora_overrides(c)
  graphdef, _ = build.abstract(model, **overrides)
  roles = lora.Roles(c.lora.enabled)
  if c.lora.enabled:
    make = lambda: build.create_adapters(model, seed + 1, **overrides)
    trainable = jax.eval_shape(make) if abstract else make()
  else:   # fp32 master weights of what full fine-tuning trains
    to_fp32 = lambda p: lora.full_ft_trainable(p, tuple(c.full_ft_modules))
    trainable = jax.eval_shape(to_fp32, frozen) if abstract else to_fp32(frozen)
  # mu updates per step: the schedule is sized in updates (steps x mu)
  tx, schedule = optimizer.make_optimizer(c, c.steps, updates_per_step=c.mu)
  state = {"trainable": trainable,
           "opt_state": jax.eval_shape(tx.init, trainable) if abstract else tx.init(trainable),
           "step": jnp.int32(0), "rng": jax.random.key_data(jax.random.key(seed))}
  return graphdef, roles, (tx, schedule), state
