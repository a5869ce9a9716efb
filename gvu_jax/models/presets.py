"""Model presets as ml_collections configs (the `model` block of a recipe)."""

import ml_collections

from gvu_jax import text
from gvu_jax.data import world


def synthetic(size="tiny"):
  """The embedded world's Janus-family UMM, trained from scratch on CPU."""
  hidden, layers, heads, width = {"tiny": (128, 4, 4, 64), "mini": (32, 2, 2, 32)}[size]
  return ml_collections.ConfigDict(dict(
      family="janus",
      image_tokenizer="cells",
      dtype="float32",
      remat=False,
      max_prompt_tokens=10,
      lm=dict(vocab_size=text.synthetic_tokenizer().get_vocab_size(), hidden=hidden,
              layers=layers, heads=heads, kv_heads=heads, intermediate=3 * hidden,
              rope_theta=10000.0, norm_eps=1e-6, max_position=64),
      vision=dict(image_size=world.IMAGE_SIZE, patch_size=world.CELL, width=width,
                  layers=2, heads=2, mlp_dim=4 * width, norm_eps=1e-6),
      codebook_size=world.CODEBOOK_SIZE,
      image_tokens=world.NUM_CELLS,
      gen_embed_dim=8,
      image_token_embed=hidden,
  ))
