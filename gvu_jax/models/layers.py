"""Shared building blocks: a Dense layer with an optional LoRA adapter, and MLP projectors."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gvu_jax.models import lora


class LoRAParam(nnx.Param):
  """A LoRA adapter weight: the only parameters trained in LoRA mode."""


class Dense(nnx.Module):
  """y = x W (+ b), plus (alpha / r) * x A B when a LoRA rank is set.

  Weights are stored in `param_dtype` (fp32 master weights) and cast to the
  compute dtype `dtype` at use. The adapter starts as PEFT's does: A from
  kaiming-uniform(a=sqrt 5) = U(-1/sqrt(din), 1/sqrt(din)), B zero, so a fresh
  adapter leaves the layer unchanged; the reference policy is the layer with B zeroed.
  """

  def __init__(self, din, dout, *, use_bias=False, lora_rank=0, lora_alpha=1.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs):
    init = nnx.initializers.normal(1.0 / math.sqrt(din))
    self.kernel = nnx.Param(init(rngs.params(), (din, dout), param_dtype))
    self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if use_bias else None
    if lora_rank:
      # variance 1/(3 din), uniform: bound sqrt(3 var) = 1/sqrt(din) (fan_in = din)
      a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
      self.lora_a = LoRAParam(a_init(rngs.params(), (din, lora_rank), param_dtype))
      self.lora_b = LoRAParam(jnp.zeros((lora_rank, dout), param_dtype))
      self.lora_scale = lora_alpha / lora_rank
    else:
      self.lora_a = self.lora_b = None
    self.dtype = dtype

  def __call__(self, x):
    x = x.astype(self.dtype)
    y = x @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora_a is not None:
      a = self.lora_a[...].astype(self.dtype)
      b = self.lora_b[...].astype(self.dtype)
      y = y + (x @ a) @ b * jnp.asarray(self.lora_scale, self.dtype)
    return y


  def fold_lora(self):
    """Folds the adapter into the kernel, W + (alpha / r) A B computed in float32
    and stored in the kernel's dtype, and drops it: the same layer, one matmul."""
    if self.lora_a is None:
      return
    folded = lora.fold(self.kernel[...], self.lora_a[...], self.lora_b[...], self.lora_scale)
    self.kernel = nnx.Param(folded.astype(self.kernel.dtype))
    self.lora_a = self.lora_b = None


def in_slices(fn, state, xs, size):
  """fn(state, *slices) over slices of `size` positions along axis 1 of every
  array of `xs` (padded to a whole number of slices; the padding's outputs are
  dropped), one slice at a time and each rematerialized: a backward pass holds
  one slice's intermediates, not all of them. -> fn's outputs over all positions."""
  n = xs[0].shape[1]
  pad = -n % size
  slice_major = lambda x: jnp.moveaxis(jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
                                       .reshape((x.shape[0], -1, size) + x.shape[2:]), 1, 0)
  one = jax.checkpoint(fn)
  out = jax.lax.map(lambda parts: one(state, *parts), tuple(slice_major(x) for x in xs))
  return jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(
      (y.shape[1], -1) + y.shape[3:])[:, :n], out)


def gelu(x):
  """Exact (erf) GELU, as in SigLIP and the Janus projectors."""
  return jax.nn.gelu(x, approximate=False)


class MlpProjector(nnx.Module):
  """Linear -> GELU -> Linear (Janus `aligner`, `gen_aligner` and `gen_head`)."""

  def __init__(self, din, dhidden, dout, *, dtype, param_dtype, rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Dense(din, dhidden, **kw)
    self.fc2 = Dense(dhidden, dout, **kw)

  def __call__(self, x):
    return self.fc2(gelu(self.fc1(x)))
