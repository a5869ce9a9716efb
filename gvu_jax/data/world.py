"""A procedural compositional world of coloured shapes on a 4x4 grid.

Images are 32x32 RGB on a black background, split into 4x4 cells of 8x8
pixels. Each cell is empty or holds one object drawn with at least a 1-pixel
empty margin, so objects in neighbouring cells never touch. Cells map 1:1 to
codes of a 25-entry codebook, which is the exact image tokenizer of the model.

Prompts follow the six GenEval categories and templates.
"""
import dataclasses
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

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position",
              "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = ("one", "two", "three", "four")


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


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """A prompt: objects are (shape, color or None, count); relation or None."""
  category: str
  objects: tuple[tuple[str, str | None, int], ...]
  relation: str | None = None

  @property
  def text(self) -> str:
    phrases = []
    for shape, color, count in self.objects:
      if self.category == "counting":
        noun = shape + ("es" if shape.endswith("s") else "s") * (count > 1)
        phrases.append(f"{NUMBERS[count - 1]} {noun}")
      else:
        words = f"{color} {shape}" if color else shape
        article = "an" if words[0] in "aeiou" else "a"
        phrases.append(f"{article} {words}")
    joiner = f" {self.relation} " if self.relation else " and "
    return "a photo of " + joiner.join(phrases)


@functools.cache
def _all_specs() -> tuple[PromptSpec, ...]:
  pairs = list(itertools.combinations(SHAPES, 2))
  specs = [PromptSpec("single_object", ((s, None, 1),)) for s in SHAPES]
  specs += [PromptSpec("two_object", ((a, None, 1), (b, None, 1)))
            for a, b in pairs]
  specs += [PromptSpec("counting", ((s, None, n),))
            for s in SHAPES for n in range(1, len(NUMBERS) + 1)]
  specs += [PromptSpec("colors", ((s, c, 1),)) for s in SHAPES for c in COLORS]
  specs += [PromptSpec("position", ((a, None, 1), (b, None, 1)), rel)
            for a, b in itertools.permutations(SHAPES, 2) for rel in RELATIONS]
  specs += [PromptSpec("color_attr", ((a, ca, 1), (b, cb, 1)))
            for a, b in pairs
            for ca, cb in itertools.permutations(COLORS, 2)]
  return tuple(specs)


def all_specs() -> list[PromptSpec]:
  """Every prompt of every category, in a fixed order."""
  return list(_all_specs())


def vocabulary() -> list[str]:
  """Sorted list of every word used by any prompt."""
  return sorted({w for spec in _all_specs() for w in spec.text.split()})


class Splits(NamedTuple):
  """Prompt splits of the world; no prompt is in two of them.

  pretrain: paired with rendered scenes for supervised pretraining (both branches).
  gvu:      text only: the prompts the GvU stage trains on, never paired with an
            image anywhere. Empty when the GvU stage reuses the pretraining prompts.
  heldout:  evaluation only, never used by any training stage.
  """
  pretrain: list
  gvu: list
  heldout: list


def split_specs(seed: int, heldout_fraction: float = 0.2, gvu_fraction: float = 0.0) -> Splits:
  """Seeded per-category split of all_specs(). Every category keeps at least one
  held-out and one pretraining prompt; the held-out set depends on the seed and
  heldout_fraction only, so runs with different gvu_fraction are judged alike."""
  if not 0 < heldout_fraction < 1 or not 0 <= gvu_fraction < 1 - heldout_fraction:
    raise ValueError(f"data.heldout_fraction={heldout_fraction}, data.gvu_fraction="
                     f"{gvu_fraction}: expected 0 < heldout < 1 and 0 <= gvu < 1 - heldout")
  splits = Splits([], [], [])
  for i, category in enumerate(CATEGORIES):
    specs = [s for s in _all_specs() if s.category == category]
    n_held = min(max(1, round(heldout_fraction * len(specs))), len(specs) - 1)
    n_gvu = min(round(gvu_fraction * len(specs)), len(specs) - 1 - n_held)
    if gvu_fraction > 0:
      n_gvu = max(n_gvu, 1) if len(specs) - n_held > 1 else 0
    order = np.random.default_rng([seed, i]).permutation(len(specs))
    rank = {int(j): r for r, j in enumerate(order)}
    for j, spec in enumerate(specs):
      r = rank[j]
      (splits.heldout if r < n_held else
       splits.gvu if r < n_held + n_gvu else splits.pretrain).append(spec)
  return splits


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
  """A random scene with exactly the objects the prompt mentions.

  Missing colours are uniform per object, cells are distinct. Position scenes
  are resampled until the judge agrees with the relation.

  Args:
    spec: the prompt to satisfy.
    rng: source of randomness; the scene is a function of its state.

  Returns:
    A scene that satisfies `spec`.
  """
  from gvu_jax.evaluation import judge  # Local: the judge imports this module.
  while True:
    objects = [(shape, color or COLORS[rng.integers(len(COLORS))])
               for shape, color, count in spec.objects for _ in range(count)]
    cells = rng.choice(NUM_CELLS, size=len(objects), replace=False).tolist()
    scene = tuple(Object(shape, color, cell // GRID, cell % GRID)
                  for (shape, color), cell in zip(objects, cells))
    if spec.relation is None or judge.judge(render(scene), spec):
      return scene


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def near_miss(spec: PromptSpec, rng: np.random.Generator) -> PromptSpec:
  """A prompt of the same category that differs from `spec` in exactly what the
  category tests: another shape (single and two objects), one more or one fewer
  (counting), another colour (colors), the opposite relation (position), the two
  colours swapped (colour attribution). No image satisfies both."""
  objects = spec.objects
  if spec.category == "position":
    return dataclasses.replace(spec, relation=OPPOSITE[spec.relation])
  if spec.category == "color_attr":
    (a, ca, _), (b, cb, _) = objects
    return dataclasses.replace(spec, objects=((a, cb, 1), (b, ca, 1)))
  shape, color, count = objects[-1]
  if spec.category == "counting":
    counts = [n for n in (count - 1, count + 1) if 1 <= n <= len(NUMBERS)]
    return dataclasses.replace(spec, objects=((shape, color, int(rng.choice(counts))),))
  if spec.category == "colors":
    other = [c for c in COLORS if c != color]
    return dataclasses.replace(spec, objects=((shape, str(rng.choice(other)), count),))
  other = [s for s in SHAPES if s not in {o[0] for o in objects}]
  return dataclasses.replace(spec, objects=objects[:-1] + ((str(rng.choice(other)), color,
                                                            count),))


@functools.cache
def _bags_of_words() -> np.ndarray:
  """Int [len(all_specs()), len(vocabulary())] word counts of every prompt."""
  index = {w: i for i, w in enumerate(vocabulary())}
  bags = np.zeros((len(_all_specs()), len(index)), np.int32)
  for i, spec in enumerate(_all_specs()):
    for word in spec.text.split():
      bags[i, index[word]] += 1
  bags.setflags(write=False)
  return bags


def distractors(spec: PromptSpec, image, k: int,
                rng: np.random.Generator) -> list[PromptSpec]:
  """Up to k wrong prompts for `image` of the same category as `spec`.

  Candidates are ranked by how many words they change (ties broken at random),
  so near misses come first: swapped objects or colours, then one changed
  attribute, and so on. Only prompts that the judge rejects on `image` are kept.

  Args:
    spec: the true prompt, one of all_specs().
    image: uint8 [32, 32, 3] image.
    k: maximum number of distractors.
    rng: breaks ties between equally near candidates.

  Returns:
    Distinct specs whose text differs from spec.text.
  """
  from gvu_jax.evaluation import judge  # Local: the judge imports this module.
  detections = judge.detect(image)
  specs, bags = _all_specs(), _bags_of_words()
  distance = np.abs(bags - bags[specs.index(spec)]).sum(-1)
  chosen = []
  for i in np.lexsort((rng.random(len(specs)), distance)):
    if len(chosen) == k:
      break
    candidate = specs[i]
    if (candidate.category == spec.category and candidate.text != spec.text
        and not judge.judge_detections(detections, candidate)):
      chosen.append(candidate)
  return chosen
