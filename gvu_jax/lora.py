"""LoRA bookkeeping on plain parameter dicts.

With LoRA the policy is base weights + adapters and the reference policy is the
same base weights with the adapters zeroed: one copy of the weights serves both.
"""

import jax
import jax.numpy as jnp

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
  """Union of two nested dicts with disjoint leaves."""
  out = dict(a)
  for key, value in b.items():
    out[key] = merge(out[key], value) if key in out and isinstance(value, dict) else value
  return out


class Roles:
  """How the policy and the reference weights are formed from what is trained
  (`trainable`) and what is held fixed (`frozen`).

  full fine-tune: trainable = all weights, frozen = the reference weights.
  LoRA:           trainable = adapters,    frozen = the base weights, and the
                  reference is the base with the adapters off (zeroed).
  """

  def __init__(self, use_lora: bool):
    self.use_lora = use_lora

  def policy(self, trainable, frozen):
    return merge(frozen, trainable) if self.use_lora else trainable

  def reference(self, trainable, frozen):
    if self.use_lora:
      return merge(frozen, jax.tree.map(jnp.zeros_like, trainable))
    return frozen
