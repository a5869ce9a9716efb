"""Turn a recipe's `model` config into a model definition and parameters."""

import jax
from flax import nnx

from gvu_jax.errors import InputError
from gvu_jax.models.cell_tokenizer import CellTokenizer
from gvu_jax.models.janus import JanusConfig, JanusUMM


def create(model_cfg, seed, **lm_overrides):
  """-> (graphdef, params): the model definition and a plain dict of fp32 weights."""
  if model_cfg.family != "janus":
    raise InputError(f"model.family: unknown {model_cfg.family!r}; expected 'janus'")
  cfg = JanusConfig.from_config(model_cfg, **lm_overrides)
  graphdef, state = nnx.split(JanusUMM(cfg, rngs=nnx.Rngs(seed)))
  return graphdef, nnx.to_pure_dict(state)


def abstract(model_cfg, **lm_overrides):
  """-> (graphdef, params as ShapeDtypeStructs), allocating nothing."""
  cfg = JanusConfig.from_config(model_cfg, **lm_overrides)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: JanusUMM(cfg, rngs=nnx.Rngs(0))))
  return graphdef, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                nnx.to_pure_dict(state))


def signature(model_cfg):
  """What must match between a checkpoint and a config: the weights' shapes and
  meaning, not run-time choices such as the compute dtype or remat."""
  d = model_cfg.to_dict()
  for runtime_key in ("dtype", "remat"):
    d.pop(runtime_key, None)
  return d


def image_tokenizer(model_cfg):
  if model_cfg.image_tokenizer != "cells":
    raise InputError(f"model.image_tokenizer: unknown {model_cfg.image_tokenizer!r}; "
                     "expected 'cells'")
  return CellTokenizer()
