"""Janus-family unified multimodal model: one LLaMA decoder that reads text and
understanding-encoder features (image -> text) and reads/writes discrete image
tokens through gen_embed / gen_aligner / gen_head (text -> image).

It implements the UMM interface of models/umm.py, whose functions (image_logits,
text_hidden, text_logits) are what the rest of the project calls.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from gvu_jax.models.layers import MlpProjector
from gvu_jax.models.llama import Decoder, LlamaConfig
from gvu_jax.models.vit import ViT, ViTConfig
from gvu_jax.models.vq import VQConfig, VQModel


@dataclasses.dataclass(frozen=True)
class JanusConfig:
  lm: LlamaConfig
  vision: ViTConfig
  codebook_size: int          # image-token vocabulary (VQ codes)
  image_tokens: int           # tokens per generated image
  gen_embed_dim: int = 8      # VQ code embedding width (Janus: 8)
  image_token_embed: int = 0  # gen_head hidden width; 0 = lm hidden
  image_tokenizer: str = "cells"   # "cells" (embedded world) or "vq16" (Janus VQ-16)
  vq: VQConfig | None = None      # the VQ-16 model when image_tokenizer == "vq16"

  @classmethod
  def from_config(cls, c, **lm_overrides):
    """From an ml_collections model config (see configs/); `lm_overrides` set
    run-time options such as LoRA or remat that are not part of the weights."""
    vq = None
    if c.image_tokenizer == "vq16":
      vq = dict(c.vq)
      vq["channel_multiplier"] = tuple(vq["channel_multiplier"])
      vq = VQConfig(**vq, dtype=c.dtype)
    return cls(lm=LlamaConfig.from_model_block(c, **lm_overrides),
               vision=ViTConfig(**dict(c.vision), dtype=c.dtype),
               codebook_size=c.codebook_size, image_tokens=c.image_tokens,
               gen_embed_dim=c.gen_embed_dim, image_token_embed=c.image_token_embed,
               image_tokenizer=c.image_tokenizer, vq=vq)


class JanusUMM(nnx.Module):

  def __init__(self, cfg: JanusConfig, *, rngs):
    h, dtype = cfg.lm.hidden, jnp.dtype(cfg.lm.dtype)
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.lm = Decoder(cfg.lm, rngs=rngs)
    self.vision = ViT(cfg.vision, rngs=rngs)
    self.aligner = MlpProjector(cfg.vision.width, h, h, **kw)
    self.gen_embed = nnx.Embed(cfg.codebook_size, cfg.gen_embed_dim, rngs=rngs)
    self.gen_aligner = MlpProjector(cfg.gen_embed_dim, h, h, **kw)
    self.gen_head = MlpProjector(h, cfg.image_token_embed or h, cfg.codebook_size, **kw)
    self.vq = VQModel(cfg.vq, rngs=rngs) if cfg.vq is not None else None
    self.cfg = cfg

  def embed_image_codes(self, codes):
    """Discrete image tokens -> decoder inputs (generation path)."""
    return self.gen_aligner(self.gen_embed(codes))

  def embed_query(self, ids, image_slots, pixels):
    """Text embeddings with the understanding encoder's features written, in
    order, at the `image_slots` positions (the `<image_placeholder>` tokens)."""
    x = self.lm.embed_tokens(ids)
    feats = self.aligner(self.vision(pixels)).astype(x.dtype)    # [B, n, hidden]
    index = jnp.clip(jnp.cumsum(image_slots, axis=1) - 1, 0, feats.shape[1] - 1)
    gathered = jnp.take_along_axis(feats, index[..., None], axis=1)
    return jnp.where(image_slots[..., None], gathered, x)

  def image_head(self, hidden):
    return self.gen_head(hidden).astype(jnp.float32)

  def text_head(self, hidden):
    return self.lm.lm_head(hidden).astype(jnp.float32)

