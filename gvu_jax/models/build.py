"""Turn a recipe's `model` config into a model definition and parameters."""

import jax
import jax.numpy as jnp
from flax import nnx

from gvu_jax.infra.errors import InputError
from gvu_jax.models.janus import JanusConfig, JanusUMM
from gvu_jax.models.xomni import XOmniConfig, XOmniUMM
from gvu_jax.world.codebook import CellTokenizer

FAMILIES = {"janus": (JanusConfig, JanusUMM), "xomni": (XOmniConfig, XOmniUMM)}


def _family(model_cfg, **lm_overrides):
  """-> (model config, a function rngs -> model) for the recipe's `model` block."""
  if model_cfg.family not in FAMILIES:
    raise InputError(f"model.family: unknown {model_cfg.family!r}; expected one of "
                     f"{sorted(FAMILIES)}")
  config_cls, model_cls = FAMILIES[model_cfg.family]
  cfg = config_cls.from_config(model_cfg, **lm_overrides)
  return cfg, lambda rngs: model_cls(cfg, rngs=rngs)


def create(model_cfg, seed, **lm_overrides):
  """-> (graphdef, params): the model definition and a plain dict of fp32 weights."""
  _, make = _family(model_cfg, **lm_overrides)
  graphdef, state = nnx.split(make(nnx.Rngs(seed)))
  return graphdef, nnx.to_pure_dict(state)


def create_adapters(model_cfg, seed, **lm_overrides):
  """The LoRA adapters `create(model_cfg, seed, ...)` would make, computed without
  materialising the base weights: XLA drops the initialisers nobody reads."""
  from gvu_jax.models import lora
  _, make = _family(model_cfg, **lm_overrides)

  def adapters():
    _, state = nnx.split(make(nnx.Rngs(seed)))
    return lora.split(nnx.to_pure_dict(state))[1]

  return jax.jit(adapters)()


def abstract(model_cfg, **lm_overrides):
  """-> (graphdef, params as ShapeDtypeStructs), allocating nothing."""
  _, make = _family(model_cfg, **lm_overrides)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  return graphdef, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                nnx.to_pure_dict(state))


def signature(model_cfg):
  """What must match between a checkpoint and a config: the weights' shapes and
  meaning, not run-time choices such as the compute dtype, remat, attention kernel or MLP slices."""
  d = model_cfg.to_dict()
  for runtime_key in ("dtype", "remat", "attention", "mlp_chunks"):
    d.pop(runtime_key, None)
  return d


class VQTokenizer:
  """The Janus VQ-16, whose weights are part of the model (`model.vq`)."""

  def decode(self, codes, model):
    """codes [B, N] -> pixels [B, H, W, 3], clipped to [-1, 1] as an image is."""
    return jnp.clip(model.vq.decode(codes).astype(jnp.float32), -1.0, 1.0)


class TokenSpace:
  """X-Omni reads images as the tokens it writes: the reward's "decode" is the
  identity, and the understanding query holds the generated tokens themselves."""

  def decode(self, codes, model):
    return codes


def image_tokenizer(model_cfg):
  """-> an object with decode(codes, model): image tokens -> what the model's
  understanding branch reads (pixels in [-1, 1], or the tokens themselves)."""
  if model_cfg.image_tokenizer == "cells":
    return CellTokenizer()
  if model_cfg.image_tokenizer == "vq16":
    return VQTokenizer()
  if model_cfg.image_tokenizer == "tokens":
    return TokenSpace()
  raise InputError(f"model.image_tokenizer: unknown {model_cfg.image_tokenizer!r}; "
                   "expected 'cells', 'vq16' or 'tokens'")
