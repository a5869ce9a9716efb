"""Decoded pixels as a saved image holds them.

Every image tokenizer decodes to floats in [-1, 1]; a PNG holds 8-bit values.
The reward and the judge score what a user can save and look at.
"""

import jax.numpy as jnp


def to_uint8(pixels):
  """[-1, 1] floats -> uint8 images (rounded to the nearest level, clipped)."""
  return jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def on_8bit_grid(pixels):
  """[-1, 1] floats -> the same floats rounded to the 256 levels of to_uint8, i.e.
  the pixels an image saved as 8 bits and read back gives."""
  return (to_uint8(pixels).astype(pixels.dtype) / 127.5 - 1.0).astype(pixels.dtype)
