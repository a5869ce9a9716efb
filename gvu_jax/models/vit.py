"""SigLIP-style ViT (the Janus understanding encoder): patch embedding, learned
position embedding, pre-LN blocks with fused qkv (with bias), exact GELU, final
LayerNorm, no pooling head. Pixels come in [-1, 1], NHWC."""

import dataclasses

import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from gvu_jax.models.attention import xla_attention
from gvu_jax.models.layers import Dense, gelu


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int
  patch_size: int
  width: int
  layers: int
  heads: int
  mlp_dim: int
  norm_eps: float = 1e-6
  dtype: str = "float32"

  @property
  def num_patches(self):
    return (self.image_size // self.patch_size) ** 2


class Block(nnx.Module):

  def __init__(self, cfg: ViTConfig, *, rngs):
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    self.norm1 = nnx.LayerNorm(cfg.width, epsilon=cfg.norm_eps, rngs=rngs)
    self.qkv = Dense(cfg.width, 3 * cfg.width, **kw)
    self.proj = Dense(cfg.width, cfg.width, **kw)
    self.norm2 = nnx.LayerNorm(cfg.width, epsilon=cfg.norm_eps, rngs=rngs)
    self.fc1 = Dense(cfg.width, cfg.mlp_dim, **kw)
    self.fc2 = Dense(cfg.mlp_dim, cfg.width, **kw)
    self.heads = cfg.heads

  def __call__(self, x):
    b, n, _ = x.shape
    q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h d) -> three b h n d",
                        three=3, h=self.heads)
    full = jnp.ones((b, n, n), bool)
    out = xla_attention(q.transpose(0, 2, 1, 3), k, v, full)   # k, v heads first
    x = x + self.proj(out.reshape(b, n, -1))
    return x + self.fc2(gelu(self.fc1(self.norm2(x))))


class ViT(nnx.Module):

  def __init__(self, cfg: ViTConfig, *, rngs):
    p = cfg.patch_size
    self.patch_embed = Dense(p * p * 3, cfg.width, use_bias=True,
                             dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    self.pos_embed = nnx.Param(0.02 * nnx.initializers.normal()(
        rngs.params(), (cfg.num_patches, cfg.width)))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.norm_eps, rngs=rngs)
    self.cfg = cfg

  def __call__(self, pixels):
    """pixels: [B, H, W, 3] in [-1, 1] -> features [B, num_patches, width]."""
    p = self.cfg.patch_size
    patches = rearrange(pixels, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
    x = self.patch_embed(patches) + self.pos_embed[...].astype(jnp.dtype(self.cfg.dtype))
    for block in self.blocks:
      x = block(x)
    return self.norm(x)
