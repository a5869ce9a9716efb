"""Exact GenEval-style judge for images of the shapes scene.

The judge reads pixels only. It detects objects as 4-connected components of
non-background pixels, names their colour and shape from the world's palette
and templates, then applies GenEval's per-category rules to a PromptSpec.
"""
import functools
from typing import NamedTuple

import numpy as np

from gvu_jax.world import prompts, scene

BACKGROUND_MAX = 64  # A pixel is background if its max channel is <= this.
COLOR_TOLERANCE = 48.0  # Max L2 distance of a mean colour to its palette entry.
SHAPE_IOU = 0.9  # Min IoU of a component with a shape template.
POSITION_THRESHOLD = 0.1  # GenEval's relative position slack.


class Detection(NamedTuple):
  shape: str  # A world shape or "unknown".
  color: str  # A world colour or "unknown".
  bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1); x1 and y1 exclusive.


@functools.cache
def _templates() -> dict[str, np.ndarray]:
  """Binary shape masks cropped to their bounding boxes."""
  templates = {}
  for shape in scene.SHAPES:
    mask = scene.patch_table()[scene.code_of(shape, scene.COLORS[0])].any(-1)
    ys, xs = np.nonzero(mask)
    templates[shape] = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  return templates


def _components(mask: np.ndarray) -> list[np.ndarray]:
  """4-connected components of a binary [H, W] mask, as binary masks."""
  h, w = mask.shape
  labels = np.zeros((h + 2, w + 2), np.int32)  # Zero border: no wrap-around.
  labels[1:-1, 1:-1] = np.arange(1, h * w + 1).reshape(h, w) * mask
  while True:  # Propagate the max label to 4-neighbours until stable.
    inner = labels[1:-1, 1:-1]
    new = mask * np.maximum.reduce([inner, labels[:-2, 1:-1], labels[2:, 1:-1],
                                    labels[1:-1, :-2], labels[1:-1, 2:]])
    if (new == inner).all():
      return [inner == l for l in np.unique(inner[mask])]
    labels[1:-1, 1:-1] = new


def _iou_top_left(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two binary masks aligned on their top-left corners."""
  h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
  pa, pb = np.zeros((h, w), bool), np.zeros((h, w), bool)
  pa[:a.shape[0], :a.shape[1]] = a
  pb[:b.shape[0], :b.shape[1]] = b
  return (pa & pb).sum() / (pa | pb).sum()


def _name_color(mean_rgb: np.ndarray) -> str:
  names = list(scene.PALETTE)
  dists = np.linalg.norm(np.array(list(scene.PALETTE.values())) - mean_rgb,
                         axis=-1)
  best = dists.argmin()
  return names[best] if dists[best] <= COLOR_TOLERANCE else "unknown"


def _name_shape(crop: np.ndarray) -> str:
  ious = {s: _iou_top_left(crop, t) for s, t in _templates().items()}
  best = max(ious, key=ious.get)
  return best if ious[best] >= SHAPE_IOU else "unknown"


def detect(image) -> list[Detection]:
  """Objects in a uint8 [H, W, 3] image (any content, not only renders)."""
  image = np.asarray(image)
  detections = []
  for comp in _components(image.max(-1) > BACKGROUND_MAX):
    ys, xs = np.nonzero(comp)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    detections.append(Detection(
        shape=_name_shape(comp[y0:y1, x0:x1]),
        color=_name_color(image[comp].mean(0)),
        bbox=(int(x0), int(y0), int(x1), int(y1))))
  return detections


def relations(box_a, box_b) -> set[str]:
  """GenEval's relative position of box a with respect to box b."""
  boxes = np.array([box_a, box_b], np.float64).reshape(2, 2, 2)
  center_a, center_b = boxes.mean(1)
  dim_a, dim_b = boxes[:, 1] - boxes[:, 0]
  offset = center_a - center_b
  revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b),
                       0) * np.sign(offset)
  if np.all(np.abs(revised) < 1e-3):
    return set()
  dx, dy = revised / np.linalg.norm(offset)
  rels = set()
  if dx < -0.5:
    rels.add("left of")
  if dx > 0.5:
    rels.add("right of")
  if dy < -0.5:
    rels.add("above")
  if dy > 0.5:
    rels.add("below")
  return rels


def judge_detections(detections: list[Detection],
                     spec: prompts.PromptSpec) -> bool:
  """Whether detections satisfy a prompt, with GenEval's rules.

  Each mentioned shape needs at least `count` instances (exactly `count` for
  counting), all of the stated colour if any. A relation must hold for at
  least one pair of instances. Unmentioned and unknown shapes are ignored.

  Args:
    detections: output of `detect`.
    spec: the prompt.

  Returns:
    True if the prompt is satisfied.
  """
  groups = []
  for shape, color, count in spec.objects:
    found = [d for d in detections if d.shape == shape]
    if len(found) < count:
      return False
    if spec.category == "counting" and len(found) > count:
      return False
    if color is not None and any(d.color != color for d in found):
      return False
    groups.append(found)
  if spec.relation is None:
    return True
  return any(spec.relation in relations(a.bbox, b.bbox)
             for a in groups[0] for b in groups[1])


def judge(image, spec: prompts.PromptSpec) -> bool:
  """Whether a uint8 [H, W, 3] image satisfies a prompt."""
  return judge_detections(detect(image), spec)


def judge_batch(images, specs) -> np.ndarray:
  """Bool [N]: judge(images[i], specs[i])."""
  return np.array([judge(im, s) for im, s in zip(images, specs, strict=True)],
                  bool)


def category_accuracy(results, specs) -> dict[str, float]:
  """Accuracy per category present, and "overall" as their mean (GenEval)."""
  per_category = {}
  for c in prompts.CATEGORIES:
    hits = [r for r, s in zip(results, specs, strict=True) if s.category == c]
    if hits:
      per_category[c] = float(np.mean(hits))
  return {"overall": float(np.mean(list(per_category.values()))),
          **per_category}
