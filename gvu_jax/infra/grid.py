"""Image grids people can read: a title, a legend for the correctness borders,
a label per row, and wrapped captions in a real font."""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 2  # Pixels between tiles.
BORDER = 3  # Width of the mark border, drawn on the tile's edge.
MAX_CAPTION_LINES = 3
MARK_COLORS = {True: (0, 170, 0), False: (220, 0, 0)}
FONT_SIZE = 12
PAD = 6


def font(size=FONT_SIZE):
  """Pillow's bundled scalable font (no system fonts needed)."""
  return ImageFont.load_default(size=size)


def _wrap(text: str, face, width: int) -> list[str]:
  """Greedy word wrap to `width` pixels; long words and extra lines are cut."""
  lines = []
  for word in text.split():
    if lines and face.getlength(f"{lines[-1]} {word}") <= width:
      lines[-1] += f" {word}"
    else:
      while len(word) > 1 and face.getlength(word) > width:
        word = word[:-1]
      lines.append(word)
  return lines[:MAX_CAPTION_LINES]


def render_grid(images, ncols: int, scale: int = 4, captions: list[str] | None = None,
                marks: list[bool] | None = None, title: str = "",
                row_labels: list[str] | None = None) -> Image.Image:
  """Tiles uint8 [N, H, W, 3] images into a picture.

  Args:
    images: uint8 [N, H, W, 3].
    ncols: tiles per row.
    scale: nearest-neighbour upscaling factor of each tile.
    captions: optional text under each tile, wrapped to its width.
    marks: optional per-tile flag, drawn as a green (True: the exact judge says
      correct) or red (False: wrong) border; the legend says so.
    title: optional line above the grid.
    row_labels: optional label left of each row (e.g. its category).
  """
  images = np.asarray(images, np.uint8)
  n, h, w, _ = images.shape
  th, tw = h * scale, w * scale
  nrows = -(-n // ncols)
  face, bold = font(), font(FONT_SIZE + 3)
  wrapped = [_wrap(c, face, tw) for c in captions] if captions else [[]] * n
  line_h = int(face.getbbox("Ag")[3]) + 2
  caption_h = line_h * max(map(len, wrapped)) + (2 if captions else 0)
  cell_h = th + caption_h
  label_w = (int(max(bold.getlength(label) for label in row_labels)) + 2 * PAD
             if row_labels else 0)
  header = [(title, bold)] if title else []
  if marks is not None:
    header.append(("green border: the exact judge says the image matches its prompt;  "
                   "red: it does not", face))
  header_h = sum(int(f.getbbox("Ag")[3]) + PAD for _, f in header) + (PAD if header else 0)
  grid_w = ncols * tw + (ncols - 1) * GAP
  canvas = Image.new("RGB", (label_w + grid_w, header_h + nrows * cell_h + (nrows - 1) * GAP),
                     "white")
  draw = ImageDraw.Draw(canvas)
  y = PAD
  for text, f in header:
    draw.text((PAD, y), text, fill="black", font=f)
    y += int(f.getbbox("Ag")[3]) + PAD
  for r, label in enumerate(row_labels or []):
    draw.text((PAD, header_h + r * (cell_h + GAP) + th // 2), label, fill="black", font=bold,
              anchor="lm")
  for i, image in enumerate(images):
    x = label_w + (i % ncols) * (tw + GAP)
    y = header_h + (i // ncols) * (cell_h + GAP)
    tile = image.repeat(scale, axis=0).repeat(scale, axis=1)
    canvas.paste(Image.fromarray(tile), (x, y))
    if marks is not None:
      draw.rectangle((x, y, x + tw - 1, y + th - 1), outline=MARK_COLORS[bool(marks[i])],
                     width=BORDER)
    for j, line in enumerate(wrapped[i]):
      draw.text((x, y + th + 1 + j * line_h), line, fill="black", font=face)
  return canvas


def save_grid(path, images, ncols: int, **kwargs):
  """render_grid(...) saved as a PNG at `path` (parents created); returns it as
  uint8 [H, W, 3]."""
  canvas = render_grid(images, ncols, **kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)
  return np.asarray(canvas)


def side_by_side(path, left, right, gap=16):
  """Two pictures (uint8 [H, W, 3]) next to each other, tops aligned -> a PNG."""
  h = max(left.shape[0], right.shape[0])
  canvas = Image.new("RGB", (left.shape[1] + gap + right.shape[1], h), "white")
  canvas.paste(Image.fromarray(left), (0, 0))
  canvas.paste(Image.fromarray(right), (left.shape[1] + gap, 0))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)
  return np.asarray(canvas)
