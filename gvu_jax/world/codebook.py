"""The embedded world's image tokenizer: an exact, fixed cell codebook.

Each 8x8 cell of a 32x32 image is one token: empty, or one shape in one colour
(gvu_jax.world.patch_table). Decoding is a table lookup and encoding a
nearest-patch search, so the round trip is exact on the world's images and the
pixels the judge reads are exactly what the model generated. It stands where
Janus has its VQ-16 model (same interface: codes <-> pixels in [-1, 1]).
"""

import jax.numpy as jnp
from einops import rearrange

from gvu_jax import world


class CellTokenizer:
  """No parameters: `params` arguments are accepted and ignored for a uniform API."""

  num_tokens = world.NUM_CELLS
  codebook_size = world.CODEBOOK_SIZE
  image_size = world.IMAGE_SIZE

  def __init__(self):
    table = jnp.asarray(world.patch_table(), jnp.float32)
    self.table = table / 127.5 - 1.0                      # [codes, cell, cell, 3]

  def decode(self, codes, model=None):
    """codes [B, cells] int -> pixels [B, H, W, 3] in [-1, 1]. (`model` is
    unused: the VQ tokenizer's weights live in the model, this one has none.)"""
    patches = self.table[codes]
    return rearrange(patches, "b (gh gw) p q c -> b (gh p) (gw q) c", gh=world.GRID)

  def encode(self, pixels):
    """pixels [B, H, W, 3] in [-1, 1] -> codes [B, cells] (nearest cell patch)."""
    c = world.CELL
    patches = rearrange(pixels, "b (gh p) (gw q) ch -> b (gh gw) (p q ch)", p=c, q=c)
    table = self.table.reshape(self.table.shape[0], -1)
    dist = jnp.sum((patches[:, :, None] - table[None, None]) ** 2, axis=-1)
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)
