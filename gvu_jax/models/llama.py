"""LLaMA decoder (the Janus language model): RoPE, RMSNorm, SiLU MLP, no biases
(Qwen2, X-Omni's, adds biases to q, k and v: `qkv_bias`).

One code path serves training (full causal pass), the reward (one forward over
the understanding query) and sampling (prefill + one-token steps over a KV cache).
Attention takes an explicit boolean mask [B, T, S] (query t may read key s), so
left padding, CFG rows and the cache all use the same function.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gvu_jax.infra import sharding
from gvu_jax.models import attention as attention_lib
from gvu_jax.models.layers import Dense, in_slices

LORA_TARGETS_ALL = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  hidden: int
  layers: int
  heads: int
  kv_heads: int
  intermediate: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  max_position: int = 16384
  qkv_bias: bool = False          # Qwen2: biases on the q, k and v projections
  dtype: str = "float32"          # compute dtype; master weights stay float32
  remat: bool = False
  attention: str = "xla"          # kernel, see models/attention.py (a run-time choice)
  mlp_chunks: int = 1             # full passes run the MLP over this many token slices
  lora_rank: int = 0
  lora_alpha: float = 1.0
  lora_targets: tuple = LORA_TARGETS_ALL

  def __post_init__(self):
    attention_lib.check(self.attention)

  @property
  def head_dim(self):
    return self.hidden // self.heads

  @classmethod
  def from_model_block(cls, c, **overrides):
    """The decoder of an ml_collections `model` block (see configs/): its `lm`
    sizes plus the block's compute dtype, remat and attention; `overrides` set
    run-time options such as LoRA that are not part of the weights."""
    lm = dict(c.lm, dtype=c.dtype, remat=c.get("remat", False),
              attention=c.get("attention", "xla"), mlp_chunks=c.get("mlp_chunks", 1),
              **overrides)
    if "lora_targets" in lm:
      lm["lora_targets"] = tuple(lm["lora_targets"])
    return cls(**lm)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale, computed in float32 (LLaMA)."""

  def __init__(self, dim, eps):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...]).astype(dtype)


def rotary(positions, theta, head_dim):
  """(cos, sin) [B, T, 1, head_dim / 2] of the rotate-half rotary embedding at
  `positions` [B, T]. The decoder computes them once per pass for every layer's q
  and k: computed inside each layer, XLA on CPU fused them into the rotation and
  evaluated sin and cos once per element of q and k, in the backward pass too."""
  half = head_dim // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs          # [B, T, half]
  return jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]


def apply_rotary(x, cos_sin):
  """x [B, T, H, D] rotated by rotary(...)'s (cos, sin)."""
  cos, sin = cos_sin
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def rope(x, positions, theta):
  """Rotate-half rotary embedding. x: [B, T, H, D], positions: [B, T]."""
  return apply_rotary(x, rotary(positions, theta, x.shape[-1]))


def _projection(cfg, name, din, dout, rngs):
  """A projection (biased only for q/k/v with `qkv_bias`), with a LoRA adapter
  when `name` is a LoRA target."""
  rank = cfg.lora_rank if name in cfg.lora_targets else 0
  return Dense(din, dout, use_bias=cfg.qkv_bias and name in ("q", "k", "v"), lora_rank=rank,
               lora_alpha=cfg.lora_alpha, dtype=jnp.dtype(cfg.dtype), rngs=rngs)


class Attention(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs):
    dense = lambda name, din, dout: _projection(cfg, name, din, dout, rngs)
    hd = cfg.head_dim
    self.q = dense("q", cfg.hidden, cfg.heads * hd)
    self.k = dense("k", cfg.hidden, cfg.kv_heads * hd)
    self.v = dense("v", cfg.hidden, cfg.kv_heads * hd)
    self.o = dense("o", cfg.heads * hd, cfg.hidden)
    self.cfg = cfg

  def __call__(self, x, cos_sin, mask, cache=None, write_index=None):
    """cos_sin: rotary(positions). Returns (output, updated cache). A cache is a
    list of segments ({"k": [...], "v": [...]}, init_cache): the T new keys/values
    are written into the last segment at [write_index, write_index + T) and the
    query reads every segment given, S slots in all (mask [B, T, S]). The sampler
    passes only the segments filled so far, so a decode step reads what it needs,
    not the whole cache."""
    cfg, (b, t, _) = self.cfg, x.shape
    q = self.q(x).reshape(b, t, cfg.heads, cfg.head_dim)
    k = self.k(x).reshape(b, t, cfg.kv_heads, cfg.head_dim)
    v = self.v(x).reshape(b, t, cfg.kv_heads, cfg.head_dim)
    q, k = apply_rotary(q, cos_sin), apply_rotary(k, cos_sin)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)   # heads first: [B, Hkv, T, D]
    if cache is not None:
      write = lambda segments, new: [*segments[:-1], jax.lax.dynamic_update_slice(
          segments[-1], new.astype(segments[-1].dtype), (0, 0, write_index, 0))]
      cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
      k, v = cache["k"], cache["v"]
    out = attention_lib.attention(q, k, v, mask, cfg.attention, full_pass=cache is None)
    out = out.reshape(b, t, cfg.heads * cfg.head_dim)
    return self.o(out), cache


class Mlp(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs):
    dense = lambda name, din, dout: _projection(cfg, name, din, dout, rngs)
    self.gate = dense("gate", cfg.hidden, cfg.intermediate)
    self.up = dense("up", cfg.hidden, cfg.intermediate)
    self.down = dense("down", cfg.intermediate, cfg.hidden)
    self.cfg = cfg

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs):
    self.input_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x, cos_sin, mask, cache=None, write_index=None):
    h, cache = self.attn(self.input_norm(x), cos_sin, mask, cache, write_index)
    x = x + h
    mlp = self.mlp if _decode_step(x) else functools.partial(
        _in_token_slices, self.mlp, slices=self.mlp.cfg.mlp_chunks)
    return x + mlp(self.post_attn_norm(x)), cache


def _in_token_slices(mlp, x, slices):
  """mlp(x) [B, T, H] over `slices` slices of the T tokens (layers.in_slices): the
  MLP is per token, so the result is the same, and a backward pass holds one
  slice's [B, T / slices, intermediate] activations at a time, not all three of
  them for every token (the largest part of a layer's working set)."""
  if slices <= 1:
    return mlp(x)
  graphdef, state = nnx.split(mlp)
  return in_slices(lambda state, part: nnx.merge(graphdef, state)(part), state, (x,),
                   -(-x.shape[1] // slices))


def _decode_step(x):
  """A decode step: one new token per row (no backward pass, nothing to slice)."""
  return x.shape[1] == 1


def _remat_layer(layer, x, cos_sin, mask, cache=None, write_index=None):
  """layer(...) whose activations are recomputed in the backward pass (jax.checkpoint
  over the layer's weights as a pure function) -> (output, cache)."""
  graphdef, state = nnx.split(layer)
  forward = lambda state, x, cache: nnx.merge(graphdef, state)(x, cos_sin, mask, cache,
                                                               write_index)
  return jax.checkpoint(forward)(state, x, cache)


class Decoder(nnx.Module):
  """Token embedding, the decoder stack and the final norm; `lm_head` for text."""

  def __init__(self, cfg: LlamaConfig, *, rngs):
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden, rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.final_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
    self.lm_head = Dense(cfg.hidden, cfg.vocab_size, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    self.cfg = cfg

  def embed_tokens(self, ids):
    return self.embed(ids).astype(jnp.dtype(self.cfg.dtype))

  # Hooks for decoders that treat positions of different kinds differently
  # (models/xomni.py); here every position is the same kind.
  def split_kinds(self, x):
    """Decoder input -> (embeddings [B, T, hidden], per-position kind or None)."""
    return x, None

  def layer_update(self, index, x, out, kinds):
    """The residual stream after layer `index` (input x, output out)."""
    return out

  def norm(self, x, kinds):
    return self.final_norm(x)

  def __call__(self, x, positions, mask, cache=None, write_index=None):
    """x: input embeddings [B, T, hidden]. Returns final-normed hidden states
    and the updated cache (a list with one {"k", "v"} per layer, or None)."""
    rows = lambda x: sharding.constrain(x, ("batch", "length", "act_embed"))
    x, kinds = self.split_kinds(x)
    x = rows(x)
    new_cache = None if cache is None else []
    cos_sin = rotary(positions, self.cfg.rope_theta, self.cfg.head_dim)
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else cache[i]
      # Passes of many tokens (training, the reward, a prompt shared by a group) are
      # optionally rematerialized; a decode step has no backward pass.
      if self.cfg.remat and not _decode_step(x):
        out, c = _remat_layer(layer, x, cos_sin, mask, layer_cache, write_index)
      else:
        out, c = layer(x, cos_sin, mask, layer_cache, write_index)
      if cache is not None:
        new_cache.append(c)
      x = rows(self.layer_update(i, x, out, kinds))
    return self.norm(x, kinds), new_cache

  def init_cache(self, batch, lengths, dtype=None):
    """A zero KV cache per layer, {"k": [...], "v": [...]}: one segment of each of
    `lengths` slots (an int: one segment), heads first (models/attention.py)."""
    cfg = self.cfg
    lengths = (lengths,) if isinstance(lengths, int) else tuple(lengths)
    dtype = dtype or jnp.dtype(cfg.dtype)
    zeros = lambda: [jnp.zeros((batch, cfg.kv_heads, n, cfg.head_dim), dtype) for n in lengths]
    return [{"k": zeros(), "v": zeros()} for _ in range(cfg.layers)]


CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")   # logical axes of init_cache arrays
