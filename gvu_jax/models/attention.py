"""Softmax attention, four ways, chosen by the model config's `attention`:

  xla          the portable reference: einsums with a float32 softmax (every backend).
  dot_product  `jax.nn.dot_product_attention`, XLA implementation.
  cudnn        `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN flash
               attention on NVIDIA GPUs (bfloat16/float16 only).
  splash       Pallas splash attention (block-sparse flash) on TPU; on other backends
               it runs in Pallas' interpreter (tests only: slow).
  auto         cudnn on GPU (in bfloat16/float16), splash on TPU, xla elsewhere.

The fused kernels (cudnn, splash) serve full passes only: training, the reward and
any pass whose mask is `umm.causal_mask(valid)`, i.e. query t reads key s iff
s <= t and s, t are both real or both padding. splash reads that structure (as
segment ids) from the mask's last row. Passes over a KV cache (sampling) always
use xla: one query token per step moves too little compute for a kernel to help.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra import sharding
from gvu_jax.infra.errors import InputError

IMPLEMENTATIONS = ("xla", "dot_product", "cudnn", "splash", "auto")
SPLASH_BLOCK = 128   # splash's sequence tile; full passes are padded to a multiple of it


_TARGET = None   # the platform programs are compiled for, where not this process's


def platform():
  """The platform the programs traced now will run on: this process's backend, or
  the one `compiling_for` names (a TPU slice compiled for from another host)."""
  return _TARGET or jax.default_backend()


@contextlib.contextmanager
def compiling_for(name):
  global _TARGET
  previous, _TARGET = _TARGET, name
  try:
    yield
  finally:
    _TARGET = previous


def check(name):
  if name not in IMPLEMENTATIONS:
    raise InputError(f"model.attention: unknown {name!r}; expected one of "
                     f"{list(IMPLEMENTATIONS)}")


def resolve(name, dtype=jnp.bfloat16):
  """`auto` -> the fused kernel of the default backend for this compute dtype."""
  check(name)
  if name != "auto":
    return name
  backend = platform()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "splash" if backend == "tpu" else "xla"


def xla_attention(q, k, v, mask):
  """q: [B,T,H,D], k/v: [B,Hkv,S,D], mask: [B,T,S] bool -> [B,T,H,D].

  Keys and values come heads-first, the KV cache's layout: both einsums then read
  them as they lie. (With [B,S,H,D], XLA on CPU transposed the whole cache at
  every decode step: 9x slower per layer at 32 rows x 287 slots.)"""
  return cached_attention(q, [k], [v], mask)


def cached_attention(q, k_segments, v_segments, mask):
  """xla_attention over keys and values held in segments ([B,Hkv,S_i,D] each, the
  KV cache's; the mask [B,T,sum S_i] covers them in order): each einsum reads a
  segment where it lies, one float32 softmax spans them all. Nothing is
  concatenated but the [B,H,T,S] scores."""
  pairs = [_repeat_kv(k, v, q.shape[2]) for k, v in zip(k_segments, v_segments)]
  scores = [jnp.einsum("bthd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
            for k, _ in pairs]
  scores = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_segments[0].dtype)
  ends = np.cumsum([k.shape[2] for k in k_segments])
  parts = jnp.split(probs, ends[:-1], axis=-1) if len(pairs) > 1 else [probs]
  out = jnp.einsum("bhts,bhsd->bthd", parts[0], pairs[0][1])
  for p, (_, v) in zip(parts[1:], pairs[1:]):
    out = out + jnp.einsum("bhts,bhsd->bthd", p, v)
  return out


def _repeat_kv(k, v, heads):
  """Grouped-query attention: share each kv head across heads // kv_heads q heads."""
  groups = heads // k.shape[1]
  if groups == 1:
    return k, v
  return jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)


def _dot_product(q, k, v, mask, implementation):
  seq_first = lambda x: x.transpose(0, 2, 1, 3)   # jax.nn's layout: [B,S,Hkv,D]
  return jax.nn.dot_product_attention(q, seq_first(k), seq_first(v), mask=mask[:, None],
                                      implementation=implementation).astype(v.dtype)


@functools.cache
def _splash_kernel(heads, length, interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  block = next(b for b in (512, 256, SPLASH_BLOCK) if length % b == 0)   # tiles must divide it
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret), sk.SegmentIds


def _splash(q, k, v, mask):
  """Over a mesh each device runs the kernel on its own rows and heads: XLA cannot
  partition a Mosaic kernel, so it goes inside a shard_map over the active layout."""
  k, v = _repeat_kv(k, v, q.shape[2])
  layout = sharding.active()
  if layout is None or layout.mesh.size == 1:
    return _splash_local(q, k, v, mask)
  rows_heads = layout.spec(("batch", None, "heads", None), q.shape)
  kv = layout.spec(("batch", "heads", None, None), k.shape)
  rows = layout.spec(("batch", None, None), mask.shape)
  return jax.shard_map(_splash_local, mesh=layout.mesh, in_specs=(rows_heads, kv, kv, rows),
                       out_specs=rows_heads, check_vma=False)(q, k, v, mask)


def _splash_local(q, k, v, mask):
  b, t, h, d = q.shape
  # Segments: real tokens and padding each attend only within themselves (the
  # causal_mask contract); the tail added to reach a whole tile is a third segment.
  segments = mask[:, -1, :].astype(jnp.int32)
  length = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
  pad = length - t
  pad_seq = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
  segments = jnp.pad(segments, ((0, 0), (0, pad)), constant_values=2)
  kernel, segment_ids = _splash_kernel(h, length, platform() != "tpu")
  scale = np.float32(1.0 / np.sqrt(d))
  q = (q * scale.astype(q.dtype)).transpose(0, 2, 1, 3)
  out = jax.vmap(kernel)(pad_seq(q), pad_seq(k), pad_seq(v), segment_ids(segments, segments))
  return out.transpose(0, 2, 1, 3)[:, :t].astype(v.dtype)


def attention(q, k, v, mask, implementation="xla", full_pass=True):
  """Softmax attention with the chosen implementation (see the module docstring).
  q: [B,T,H,D], k/v: [B,Hkv,S,D] (heads first), or lists of cache segments
  (full_pass=False), mask: [B,T,S] -> [B,T,H,D]."""
  if not full_pass:
    return cached_attention(q, k, v, mask)
  implementation = resolve(implementation, q.dtype)
  if implementation == "xla":
    return xla_attention(q, k, v, mask)
  if implementation == "splash":
    return _splash(q, k, v, mask)
  return _dot_product(q, k, v, mask, None if implementation == "dot_product" else "cudnn")
