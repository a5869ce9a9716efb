"""Prompt-image pairs the exact judge vouches for: a random scene for a prompt
(`sample_scene`) and wrong prompts for an image (`distractors`)."""
import functools

import numpy as np

from gvu_jax.world import judge
from gvu_jax.world.prompts import PromptSpec, _all_specs, vocabulary
from gvu_jax.world.scene import COLORS, GRID, NUM_CELLS, Object, Scene, render


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
  while True:
    objects = [(shape, color or COLORS[rng.integers(len(COLORS))])
               for shape, color, count in spec.objects for _ in range(count)]
    cells = rng.choice(NUM_CELLS, size=len(objects), replace=False).tolist()
    scene = tuple(Object(shape, color, cell // GRID, cell % GRID)
                  for (shape, color), cell in zip(objects, cells))
    if spec.relation is None or judge.judge(render(scene), spec):
      return scene


def rejected_scene(spec: PromptSpec, rejected_by: PromptSpec, rng: np.random.Generator,
                   tries: int = 100) -> Scene:
  """A scene of `spec` on which the judge rejects `rejected_by`, resampled: a
  render of a distractor can satisfy the true prompt too (diagonal positions)."""
  for _ in range(tries):
    scene = sample_scene(spec, rng)
    if not judge.judge(render(scene), rejected_by):
      return scene
  raise ValueError(f"no scene of {spec.text!r} in {tries} tries that the judge rejects "
                   f"for {rejected_by.text!r}")


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
