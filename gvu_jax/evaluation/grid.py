"""Saves image grids with optional captions and correctness marks."""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 2  # Pixels between tiles.
BORDER = 2  # Width of the mark border, drawn on the tile's edge.
MAX_CAPTION_LINES = 3
MARK_COLORS = {True: (0, 200, 0), False: (220, 0, 0)}


def _wrap(text: str, font, width: int) -> list[str]:
  """Greedy word wrap to `width` pixels; long words and extra lines are cut."""
  lines = []
  for word in text.split():
    if lines and font.getlength(f"{lines[-1]} {word}") <= width:
      lines[-1] += f" {word}"
    else:
      while len(word) > 1 and font.getlength(word) > width:
        word = word[:-1]
      lines.append(word)
  return lines[:MAX_CAPTION_LINES]


def save_grid(path, images, ncols: int, scale: int = 4,
              captions: list[str] | None = None,
              marks: list[bool] | None = None):
  """Tiles uint8 [N, H, W, 3] images into a PNG at `path`.

  Args:
    path: output file; parent directories are created.
    images: uint8 [N, H, W, 3].
    ncols: tiles per row.
    scale: nearest-neighbour upscaling factor of each tile.
    captions: optional text drawn under each tile, wrapped to its width.
    marks: optional per-tile flag, drawn as a green (True) or red (False)
      border on the tile's edge.
  """
  images = np.asarray(images, np.uint8)
  n, h, w, _ = images.shape
  th, tw = h * scale, w * scale
  nrows = -(-n // ncols)
  font = ImageFont.load_default()
  wrapped = [_wrap(c, font, tw) for c in captions] if captions else [[]] * n
  line_h = font.getbbox("Ag")[3] + 1
  caption_h = line_h * max(map(len, wrapped))
  cell_h = th + caption_h
  canvas = Image.new("RGB", (ncols * tw + (ncols - 1) * GAP,
                             nrows * cell_h + (nrows - 1) * GAP), "white")
  draw = ImageDraw.Draw(canvas)
  for i, image in enumerate(images):
    x, y = (i % ncols) * (tw + GAP), (i // ncols) * (cell_h + GAP)
    tile = image.repeat(scale, axis=0).repeat(scale, axis=1)
    canvas.paste(Image.fromarray(tile), (x, y))
    if marks is not None:
      color = MARK_COLORS[bool(marks[i])]
      draw.rectangle((x, y, x + tw - 1, y + th - 1), outline=color,
                     width=BORDER)
    for j, line in enumerate(wrapped[i]):
      draw.text((x, y + th + j * line_h), line, fill="black", font=font)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)
