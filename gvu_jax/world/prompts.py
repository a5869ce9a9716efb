"""The embedded world's prompts: the six GenEval categories and templates, the
seeded splits (pretraining / GvU-only / held out) and near misses."""
import dataclasses
import functools
import itertools
from typing import NamedTuple

import numpy as np

from gvu_jax.world.scene import COLORS, SHAPES

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position",
              "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = ("one", "two", "three", "four")


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


def one_attribute_changes(spec: PromptSpec) -> list[PromptSpec]:
  """Every prompt that differs from `spec` in one attribute and that no image of
  `spec` satisfies: its near misses (world.near_miss: another count, colour,
  relation, the colours swapped, another shape for single and two objects), and
  each object's shape replaced by a shape the prompt does not name. Sorted by text."""
  objects = spec.objects
  out = set()
  if spec.category == "position":
    out.add(dataclasses.replace(spec, relation=OPPOSITE[spec.relation]))
  elif spec.category == "color_attr":
    (a, ca, _), (b, cb, _) = objects
    out.add(dataclasses.replace(spec, objects=((a, cb, 1), (b, ca, 1))))
  elif spec.category == "counting":
    shape, color, count = objects[0]
    out |= {dataclasses.replace(spec, objects=((shape, color, n),))
            for n in (count - 1, count + 1) if 1 <= n <= len(NUMBERS)}
  elif spec.category == "colors":
    shape, color, count = objects[0]
    out |= {dataclasses.replace(spec, objects=((shape, c, count),)) for c in COLORS if c != color}
  named = {o[0] for o in objects}
  for i, (shape, color, count) in enumerate(objects):
    for other in SHAPES:
      if other not in named:
        changed = objects[:i] + ((other, color, count),) + objects[i + 1:]
        out.add(dataclasses.replace(spec, objects=changed))
  return sorted(out, key=lambda s: s.text)
