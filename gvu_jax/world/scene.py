"""The embedded world's images: coloured shapes on a 4x4 grid.

Images are 32x32 RGB on a black background, split into 4x4 cells of 8x8
pixels. Each cell is empty or holds one object drawn with at least a 1-pixel
empty margin, so objects in neighbouring cells never touch. Cells map 1:1 to
codes of a 25-entry codebook, which is the exact image tokenizer of the model
(world/codebook.py).
"""
import functools
import itertools
from typing import NamedTuple

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 80, 255),
    "yellow": (255, 255, 0),
    "purple": (160, 32, 240),
    "orange": (255, 128, 0),
}
GRID = 4
CELL = 8
IMAGE_SIZE = GRID * CELL
NUM_CELLS = GRID * GRID
CODEBOOK_SIZE = 1 + len(SHAPES) * len(COLORS)

def shape_mask(shape: str) -> np.ndarray:
  """Binary [CELL, CELL] mask of a shape, inside a 1-pixel empty margin."""
  y, x = np.mgrid[:CELL, :CELL]
  inner = (y >= 1) & (y <= 6) & (x >= 1) & (x <= 6)
  if shape == "circle":  # Disc of radius ~2.8: rows are 2, 4, 6, 6, 4, 2 wide.
    mask = (y - 3.5) ** 2 + (x - 3.5) ** 2 <= 8
  elif shape == "square":
    mask = inner
  elif shape == "triangle":  # Pointing up: rows are 2, 2, 4, 4, 6, 6 wide.
    mask = np.abs(x - 3.5) <= (y + 1) // 2
  elif shape == "cross":  # Plus sign with arms 2 pixels thick.
    mask = (np.abs(x - 3.5) < 1) | (np.abs(y - 3.5) < 1)
  else:
    raise ValueError(f"Unknown shape {shape!r}")
  return mask & inner


def code_of(shape: str, color: str) -> int:
  """Codebook index of a shape in a colour (0 is the empty cell)."""
  return 1 + SHAPES.index(shape) * len(COLORS) + COLORS.index(color)


@functools.cache
def patch_table() -> np.ndarray:
  """Read-only uint8 [CODEBOOK_SIZE, CELL, CELL, 3]: the pixels of each code."""
  table = np.zeros((CODEBOOK_SIZE, CELL, CELL, 3), np.uint8)
  for shape, color in itertools.product(SHAPES, COLORS):
    table[code_of(shape, color)][shape_mask(shape)] = PALETTE[color]
  table.setflags(write=False)
  return table


def codes_to_image(codes) -> np.ndarray:
  """Int [..., NUM_CELLS] row-major cell codes -> uint8 [..., 32, 32, 3]."""
  codes = np.asarray(codes)
  batch = codes.shape[:-1]
  patches = patch_table()[codes].reshape(*batch, GRID, GRID, CELL, CELL, 3)
  patches = np.moveaxis(patches, -4, -3)  # [..., row, y, col, x, 3].
  return patches.reshape(*batch, IMAGE_SIZE, IMAGE_SIZE, 3)


def image_to_codes(image) -> np.ndarray:
  """Uint8 [..., 32, 32, 3] -> int32 [..., NUM_CELLS], nearest patch by L2."""
  image = np.asarray(image, np.float32)
  batch = image.shape[:-3]
  patches = image.reshape(*batch, GRID, CELL, GRID, CELL, 3)
  patches = np.moveaxis(patches, -3, -4).reshape(*batch, NUM_CELLS, -1)
  table = patch_table().reshape(CODEBOOK_SIZE, -1).astype(np.float32)
  dists = ((patches ** 2).sum(-1, keepdims=True) - 2 * patches @ table.T
           + (table ** 2).sum(-1))
  return dists.argmin(-1).astype(np.int32)


class Object(NamedTuple):
  shape: str
  color: str
  row: int
  col: int


Scene = tuple[Object, ...]


def scene_to_codes(scene: Scene) -> np.ndarray:
  """Int32 [NUM_CELLS] codes of a scene (at most one object per cell)."""
  codes = np.zeros(NUM_CELLS, np.int32)
  for obj in scene:
    cell = obj.row * GRID + obj.col
    if codes[cell]:
      raise ValueError(f"Two objects in cell ({obj.row}, {obj.col})")
    codes[cell] = code_of(obj.shape, obj.color)
  return codes


def render(scene: Scene) -> np.ndarray:
  """Uint8 [32, 32, 3] image of a scene."""
  return codes_to_image(scene_to_codes(scene))
