"""LoRA bookkeeping on plain parameter dicts.

With LoRA the policy is base weights + adapters and the reference policy is the
same base weights with the adapters zeroed: one copy of the weights serves both.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra.errors import InputError

LORA_KEYS = ("lora_a", "lora_b")


def split(params):
  """params -> (base, adapters), two dicts with disjoint leaves."""
  base, lora = {}, {}
  for key, value in params.items():
    if key in LORA_KEYS:
      lora[key] = value
    elif isinstance(value, dict):
      b, l = split(value)
      if b:
        base[key] = b
      if l:
        lora[key] = l
    else:
      base[key] = value
  return base, lora


def merge(a, b):
  """Union of two nested dicts; where both hold a leaf, b's."""
  out = dict(a)
  for key, value in b.items():
    out[key] = merge(out[key], value) if key in out and isinstance(value, dict) else value
  return out


def fold(kernel, lora_a, lora_b, scale):
  """A LoRA layer's weight with its adapter folded in, W + scale A B (scale =
  alpha / r, as PEFT's merge), in float32; numpy or jax arrays alike."""
  f32 = lambda x: x.astype(np.float32)
  return f32(kernel) + (f32(lora_a) @ f32(lora_b)) * scale


def check_modules(params, modules):
  """`gvu.full_ft_modules` names top-level modules of `params`, or one error."""
  unknown = sorted(set(modules) - set(params))
  if unknown:
    raise InputError(f"gvu.full_ft_modules: {unknown} not in the model; expected some of "
                     f"{sorted(params)} (empty = all)")


def full_ft_trainable(frozen, modules=()):
  """Full fine-tuning's trained weights: fp32 copies of the top-level `modules`
  of `frozen` (e.g. ("lm",): the language model only, as T2I-R1 trains Janus);
  empty = every weight. A copy, since the training state is donated and the
  reference must stay."""
  check_modules(frozen, modules)
  chosen = {k: frozen[k] for k in modules} if modules else frozen
  return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32), chosen)


class Roles:
  """How the policy and the reference weights are formed from what is trained
  (`trainable`) and what is held fixed (`frozen`).

  full fine-tune: trainable = all weights (or the chosen modules), frozen = the
                  reference weights; the policy is frozen with trainable's in place.
  LoRA:           trainable = adapters,    frozen = the base weights, and the
                  reference is the base with the adapters off (zeroed).
  """

  def __init__(self, use_lora: bool):
    self.use_lora = use_lora

  def policy(self, trainable, frozen):
    return merge(frozen, trainable)

  def reference(self, trainable, frozen):
    if self.use_lora:
      return merge(frozen, jax.tree.map(jnp.zeros_like, trainable))
    return frozen
