"""X-Omni (Geng et al. 2025), the GvU paper's own base model: a Qwen2.5 decoder
that reads and writes images as discrete SigLIP-VQ tokens in one sequence.

  ids < vocab_size          text tokens: `embed` (lm_embed_tokens), `lm_head`
  ids >= vocab_size         multimodal tokens, id - vocab_size in [0, mm_vocab_size):
                            `mm_embed`, `mm_head` (image codes are the first
                            image_vocab_size of them)

The first `num_mm_adap_layers` and the last `num_mm_head_layers` decoder layers
update only multimodal positions (text positions pass through them unchanged,
though their keys and values are still computed); the final norm is `mm_norm`
at multimodal positions and `lm_norm` elsewhere. An image is the text
`<SOM>H W<IMAGE>`, then H*W image tokens, then `<EOM>`.

The model has the interface of models/janus.py's JanusUMM, so the sampler, the
GRPO loss and the reward run it unchanged: decoder inputs carry one extra
channel, 1 at multimodal positions (the embedding of a token says what kind of
position it is), and an image in an understanding query is its tokens (GvU's
reward in token space: no pixel decoder in the loop).
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from gvu_jax.models.layers import Dense
from gvu_jax.models.llama import Decoder, LlamaConfig, RMSNorm


@dataclasses.dataclass(frozen=True)
class XOmniConfig:
  lm: LlamaConfig
  mm_vocab_size: int          # multimodal table (16448 in X-Omni-En)
  image_vocab_size: int       # of which image codes (16384)
  num_mm_adap_layers: int
  num_mm_head_layers: int
  image_tokens: int           # tokens per generated image (H x W)

  @classmethod
  def from_config(cls, c, **lm_overrides):
    return cls(lm=LlamaConfig.from_model_block(c, **lm_overrides),
               mm_vocab_size=c.mm_vocab_size, image_vocab_size=c.image_vocab_size,
               num_mm_adap_layers=c.num_mm_adap_layers,
               num_mm_head_layers=c.num_mm_head_layers, image_tokens=c.image_tokens)

  @property
  def codebook_size(self):
    return self.image_vocab_size


class XOmniDecoder(Decoder):
  """The Qwen2.5 stack with X-Omni's multimodal embedding, norm and head."""

  def __init__(self, cfg: XOmniConfig, *, rngs):
    super().__init__(cfg.lm, rngs=rngs)   # embed, layers, final_norm (lm_norm), lm_head
    h = cfg.lm.hidden
    self.mm_embed = nnx.Embed(cfg.mm_vocab_size, h, rngs=rngs)
    self.mm_norm = RMSNorm(h, cfg.lm.norm_eps)
    self.mm_head = Dense(h, cfg.mm_vocab_size, dtype=jnp.dtype(cfg.lm.dtype), rngs=rngs)
    first_lm, end_lm = cfg.num_mm_adap_layers, cfg.lm.layers - cfg.num_mm_head_layers
    self.multimodal_only = tuple(not first_lm <= i < end_lm for i in range(cfg.lm.layers))
    self.xcfg = cfg

  def embed_tokens(self, ids):
    """Unified ids -> [B, T, hidden + 1]: the embedding, then 1 where multimodal."""
    vocab, dtype = self.cfg.vocab_size, jnp.dtype(self.cfg.dtype)
    is_mm = ids >= vocab
    text = self.embed(jnp.where(is_mm, 0, ids))
    mm = self.mm_embed(jnp.where(is_mm, ids - vocab, 0))
    x = jnp.where(is_mm[..., None], mm, text).astype(dtype)
    return jnp.concatenate([x, is_mm[..., None].astype(dtype)], axis=-1)

  def embed_multimodal(self, mm_ids):
    """Multimodal ids (0 = the first image code) -> decoder inputs."""
    return self.embed_tokens(mm_ids + self.cfg.vocab_size)

  def split_kinds(self, x):
    return x[..., :-1], x[..., -1] > 0.5

  def layer_update(self, index, x, out, is_mm):
    if self.multimodal_only[index]:
      return jnp.where(is_mm[..., None], out, x)
    return out

  def norm(self, x, is_mm):
    return jnp.where(is_mm[..., None], self.mm_norm(x), self.final_norm(x))


class XOmniUMM(nnx.Module):

  def __init__(self, cfg: XOmniConfig, *, rngs):
    self.lm = XOmniDecoder(cfg, rngs=rngs)
    self.cfg = cfg

  def embed_image_codes(self, codes):
    return self.lm.embed_multimodal(codes)

  def embed_query(self, ids, image_slots, codes):
    """An understanding query whose `image_slots` hold, in order, the image's
    tokens `codes` [B, n] (the image block's <SOM>H W<IMAGE> ... <EOM> text is
    already in `ids`)."""
    index = jnp.clip(jnp.cumsum(image_slots, axis=1) - 1, 0, codes.shape[1] - 1)
    image_ids = jnp.take_along_axis(codes, index, axis=1) + self.cfg.lm.vocab_size
    return self.lm.embed_tokens(jnp.where(image_slots, image_ids, ids))

  def image_head(self, hidden):
    """Logits over the image codes only (X-Omni samples images from these)."""
    return self.lm.mm_head(hidden)[..., :self.cfg.image_vocab_size].astype(jnp.float32)

  def text_head(self, hidden):
    return self.lm.lm_head(hidden).astype(jnp.float32)
