"""X-Omni's image tokenizer, the encoder side (image -> SigLIP-VQ token ids):
a SigLIP2 ViT (patch 16, no class token, no final norm) whose learned position
table (a 128 x 128 grid) is resized bilinearly to each image's patch grid, then a
1x1 projection to the codebook width and nearest-codebook-entry quantisation with
both sides L2-normalised (IBQ). Images of any size whose sides are multiples of
the patch size: `preprocess` brings a picture there as X-Omni does.

X-Omni-En: width 1536, 40 layers, 16 heads, MLP 6144 (siglip2_giant_patch16_384),
codebook 16384 x 2048. Decoding tokens back to pixels is X-Omni's FLUX.1-dev
pipeline, not reproduced here (docs/checkpoints.md, X-Omni-En).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx
from PIL import Image

from gvu_jax.infra.errors import InputError
from gvu_jax.models.layers import Dense
from gvu_jax.models.vit import Block, ViTConfig


@dataclasses.dataclass(frozen=True)
class SiglipVQConfig:
  patch_size: int = 16
  width: int = 1536
  layers: int = 40
  heads: int = 16
  mlp_dim: int = 6144
  pos_grid: int = 128            # side of the learned position table (2048 px / 16)
  codebook_size: int = 16384
  codebook_dim: int = 2048
  norm_eps: float = 1e-6
  dtype: str = "float32"

  @classmethod
  def from_sizes(cls, sizes, **kw):
    """From a dict that may hold more keys (the conversion's `image_encoder`)."""
    return cls(**{k: v for k, v in sizes.items() if k in cls.__dataclass_fields__}, **kw)

  @property
  def blocks(self):
    return ViTConfig(image_size=self.pos_grid * self.patch_size, patch_size=self.patch_size,
                     width=self.width, layers=self.layers, heads=self.heads,
                     mlp_dim=self.mlp_dim, norm_eps=self.norm_eps, dtype=self.dtype)


class SiglipVQEncoder(nnx.Module):

  def __init__(self, cfg: SiglipVQConfig, *, rngs):
    p, dtype = cfg.patch_size, jnp.dtype(cfg.dtype)
    self.patch_embed = Dense(p * p * 3, cfg.width, use_bias=True, dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(0.02 * nnx.initializers.normal()(
        rngs.params(), (cfg.pos_grid * cfg.pos_grid, cfg.width)))
    self.blocks = nnx.List([Block(cfg.blocks, rngs=rngs) for _ in range(cfg.layers)])
    self.quant_conv = Dense(cfg.width, cfg.codebook_dim, use_bias=True, dtype=dtype, rngs=rngs)
    self.codebook = nnx.Param(nnx.initializers.normal()(
        rngs.params(), (cfg.codebook_size, cfg.codebook_dim)))
    self.cfg = cfg

  def positions(self, h, w):
    """The position table resized to an h x w patch grid: bilinear, half-pixel
    centres, no antialiasing (torch's F.interpolate(align_corners=False))."""
    g = self.cfg.pos_grid
    table = self.pos_embed[...].reshape(g, g, -1)
    if (h, w) != (g, g):
      table = jax.image.resize(table, (h, w, table.shape[-1]), "bilinear", antialias=False)
    return table.reshape(h * w, -1)

  def features(self, pixels):
    """pixels [B, H, W, 3] in [-1, 1] -> ViT features [B, h*w, width], (h, w)."""
    p = self.cfg.patch_size
    h, w = pixels.shape[1] // p, pixels.shape[2] // p
    patches = rearrange(pixels, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
    x = self.patch_embed(patches) + self.positions(h, w).astype(jnp.dtype(self.cfg.dtype))
    for block in self.blocks:
      x = block(x)
    return x, (h, w)

  def encode(self, pixels):
    """pixels [B, H, W, 3] in [-1, 1] -> token ids [B, h, w]."""
    x, (h, w) = self.features(pixels)
    z = self.quant_conv(x).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    e = self.codebook[...].astype(jnp.float32)
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    distance = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(e * e, -1)
                - 2 * jnp.einsum("bnd,kd->bnk", z, e))
    return jnp.argmin(distance, axis=-1).reshape(-1, h, w)


def preprocess(image, short_size=384, long_size=1152, patch_size=16, min_short_size=128,
               max_aspect_ratio=3.0):
  """A PIL image -> float32 [H, W, 3] in [-1, 1] as X-Omni's any-resolution
  transform makes it: the short side brought up to `short_size`, the long side
  down to `long_size`, each side rounded to the patch size, bicubic. Images
  with a short side under `min_short_size` or a longer aspect ratio are refused,
  as X-Omni refuses them."""
  image = image.convert("RGB")
  width, height = image.size
  short, long = min(width, height), max(width, height)
  if short < min_short_size or long / short > max_aspect_ratio:
    raise InputError(f"image {width}x{height}: X-Omni needs a short side of at least "
                     f"{min_short_size} px and an aspect ratio of at most {max_aspect_ratio}")
  w, h = float(width), float(height)
  if min(w, h) < short_size:
    w, h = w * short_size / min(width, height), h * short_size / min(width, height)
  if max(w, h) > long_size:
    scale = long_size / max(w, h)
    w, h = w * scale, h * scale
  w, h = (int(round(v / patch_size)) * patch_size for v in (w, h))
  resized = image.resize((w, h), resample=Image.BICUBIC)
  return np.asarray(resized, np.float32) / 127.5 - 1.0


# Weights the encoder does not read: the ViT's pooling head and final norm, and
# the projector's decoder side (post_quant_conv, post_conv: FLUX's conditioning).
_UNUSED = ("attn_pool.", "norm.", "head.", "fc_norm.", "post_quant_conv.", "post_conv.")


def params_from_torch(vit_state, projector_state, cfg: SiglipVQConfig, source="siglip-vq"):
  """X-Omni's ViT state dict (its `siglip_path`) and VQ projector state dict
  (`projector_path`), as name -> numpy array, -> this module's parameter tree.
  Every name and shape is checked; the first problem is one error line."""
  w, p, d = cfg.width, cfg.patch_size, cfg.codebook_dim
  want = {"patch_embed.proj.weight": (w, 3, p, p), "patch_embed.proj.bias": (w,),
          "pos_embed": (1, cfg.pos_grid ** 2, w),
          "quant_conv.weight": (d, w, 1, 1), "quant_conv.bias": (d,),
          "quantize.embedding.weight": (cfg.codebook_size, d)}
  for i in range(cfg.layers):
    for name, shape in (("norm1", (w,)), ("norm2", (w,)), ("attn.qkv", (3 * w, w)),
                        ("attn.proj", (w, w)), ("mlp.fc1", (cfg.mlp_dim, w)),
                        ("mlp.fc2", (w, cfg.mlp_dim))):
      want[f"blocks.{i}.{name}.weight"] = shape
      want[f"blocks.{i}.{name}.bias"] = (shape[0],)
  got = {}
  for state in (vit_state, projector_state):
    for name, array in state.items():
      if name.startswith(_UNUSED):
        continue
      if name not in want:
        raise InputError(f"{source}: unexpected tensor {name} {tuple(array.shape)}")
      if tuple(array.shape) != want[name]:
        raise InputError(f"{source}: tensor {name} has shape {tuple(array.shape)}, expected "
                         f"{want[name]}")
      got[name] = np.asarray(array, np.float32)
  missing = sorted(set(want) - set(got))
  if missing:
    raise InputError(f"{source}: missing tensor {missing[0]}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  dense = lambda name: {"kernel": got[f"{name}.weight"].T, "bias": got[f"{name}.bias"]}
  norm = lambda name: {"scale": got[f"{name}.weight"], "bias": got[f"{name}.bias"]}
  patch = got["patch_embed.proj.weight"]   # conv [W, C, p, p] -> dense over (p, q, c) patches
  return {
      "patch_embed": {"kernel": patch.transpose(2, 3, 1, 0).reshape(-1, w),
                      "bias": got["patch_embed.proj.bias"]},
      "pos_embed": got["pos_embed"][0],
      "blocks": {i: {"norm1": norm(f"blocks.{i}.norm1"), "norm2": norm(f"blocks.{i}.norm2"),
                     "qkv": dense(f"blocks.{i}.attn.qkv"), "proj": dense(f"blocks.{i}.attn.proj"),
                     "fc1": dense(f"blocks.{i}.mlp.fc1"), "fc2": dense(f"blocks.{i}.mlp.fc2")}
                 for i in range(cfg.layers)},
      "quant_conv": {"kernel": got["quant_conv.weight"][:, :, 0, 0].T,
                     "bias": got["quant_conv.bias"]},
      "codebook": got["quantize.embedding.weight"],
  }
