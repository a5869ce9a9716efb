"""Tests for the pixel judge and the image grid writer."""
import numpy as np
import pytest
from PIL import Image

from gvu_jax import world
from gvu_jax.infra import grid
from gvu_jax.world import judge

O = world.Object


def spec(category, *objects, relation=None):
  return world.PromptSpec(category, tuple(objects), relation)


def scene_judge(scene, prompt):
  return judge.judge(world.render(tuple(scene)), prompt)


def test_detect_on_render():
  scene = (O("circle", "red", 0, 0), O("cross", "orange", 2, 3),
           O("triangle", "yellow", 3, 1), O("square", "purple", 1, 1))
  detections = judge.detect(world.render(scene))
  expected = {(o.shape, o.color,
               (8 * o.col + 1, 8 * o.row + 1, 8 * o.col + 7, 8 * o.row + 7))
              for o in scene}
  assert {(d.shape, d.color, d.bbox) for d in detections} == expected


def test_ground_truth_renders_all_pass():
  specs = world.all_specs() * 3
  rng = np.random.default_rng(0)
  images = np.stack([world.render(world.sample_scene(s, rng)) for s in specs])
  results = judge.judge_batch(images, specs)
  assert results.all()
  accuracy = judge.category_accuracy(list(results), specs)
  assert accuracy == {"overall": 1.0, **{c: 1.0 for c in world.CATEGORIES}}


def test_category_accuracy_is_mean_over_categories():
  specs = [spec("single_object", ("circle", None, 1))] * 3 + [
      spec("colors", ("circle", "red", 1))]
  accuracy = judge.category_accuracy([True, True, False, True], specs)
  assert accuracy == pytest.approx(
      {"overall": 5 / 6, "single_object": 2 / 3, "colors": 1.0})


def test_noise_has_no_known_objects():
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  sparse = noise * (np.random.default_rng(1).random((32, 32, 1)) < 0.1)
  for image in (noise, sparse.astype(np.uint8)):
    detections = judge.detect(image)
    assert detections
    assert all(d.shape == "unknown" for d in detections)


def test_merged_blob_is_unknown():
  image = np.zeros((32, 32, 3), np.uint8)
  image[1:7, 1:15] = world.PALETTE["red"]  # Two touching squares.
  assert judge.detect(image) == [
      judge.Detection("unknown", "red", (1, 1, 15, 7))]


def test_off_palette_color_is_unknown():
  image = world.render((O("square", "red", 0, 0),))
  image[image.any(-1)] = (128, 128, 128)
  assert [(d.shape, d.color) for d in judge.detect(image)] == [
      ("square", "unknown")]


@pytest.mark.parametrize("prompt,scene,expected", [
    # single_object: any colour; other shapes don't matter.
    (spec("single_object", ("circle", None, 1)),
     [O("circle", "blue", 0, 0), O("square", "red", 1, 1)], True),
    (spec("single_object", ("circle", None, 1)),
     [O("triangle", "blue", 0, 0)], False),
    # two_object: both needed; extra shapes don't matter.
    (spec("two_object", ("circle", None, 1), ("square", None, 1)),
     [O("circle", "red", 0, 0), O("square", "red", 2, 2),
      O("cross", "blue", 3, 3)], True),
    (spec("two_object", ("circle", None, 1), ("square", None, 1)),
     [O("circle", "red", 0, 0), O("triangle", "red", 2, 2)], False),
    # counting: exactly N of that shape; other shapes don't matter.
    (spec("counting", ("circle", None, 3)),
     [O("circle", "red", 0, 0), O("circle", "blue", 0, 2),
      O("circle", "green", 3, 3), O("cross", "red", 1, 1)], True),
    (spec("counting", ("circle", None, 3)),
     [O("circle", "red", 0, 0), O("circle", "blue", 0, 2)], False),
    (spec("counting", ("circle", None, 3)),
     [O("circle", "red", 0, 0), O("circle", "blue", 0, 2),
      O("circle", "green", 3, 3), O("circle", "red", 1, 1)], False),
    (spec("counting", ("circle", None, 3)),
     [O("square", "red", 0, 0), O("square", "blue", 0, 2),
      O("square", "green", 3, 3)], False),
    # colors: all instances of the shape have the colour.
    (spec("colors", ("circle", "red", 1)),
     [O("circle", "red", 0, 0), O("square", "blue", 1, 1)], True),
    (spec("colors", ("circle", "red", 1)), [O("circle", "blue", 0, 0)], False),
    (spec("colors", ("circle", "red", 1)), [O("square", "red", 0, 0)], False),
    (spec("colors", ("circle", "red", 1)),
     [O("circle", "red", 0, 0), O("circle", "blue", 1, 1)], False),
    # position: GenEval's relative position rule.
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="left of"),
     [O("circle", "red", 1, 0), O("square", "blue", 1, 2)], True),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="left of"),
     [O("circle", "red", 1, 2), O("square", "blue", 1, 0)], False),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="right of"),
     [O("circle", "red", 1, 0), O("square", "blue", 1, 2)], False),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="above"),
     [O("circle", "red", 0, 0), O("square", "blue", 1, 1)], True),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="left of"),
     [O("circle", "red", 0, 0), O("square", "blue", 2, 1)], False),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="below"),
     [O("circle", "red", 3, 1), O("square", "blue", 0, 1)], True),
    (spec("position", ("circle", None, 1), ("square", None, 1),
          relation="below"),
     [O("circle", "red", 3, 1), O("triangle", "blue", 0, 1)], False),
    # color_attr: every instance of each shape has its stated colour.
    (spec("color_attr", ("circle", "red", 1), ("square", "blue", 1)),
     [O("circle", "red", 0, 0), O("square", "blue", 3, 3),
      O("triangle", "green", 2, 2)], True),
    (spec("color_attr", ("circle", "red", 1), ("square", "blue", 1)),
     [O("circle", "blue", 0, 0), O("square", "red", 3, 3)], False),
    (spec("color_attr", ("circle", "red", 1), ("square", "blue", 1)),
     [O("circle", "red", 0, 0), O("square", "blue", 3, 3),
      O("circle", "green", 2, 2)], False),
    (spec("color_attr", ("circle", "red", 1), ("square", "blue", 1)),
     [O("circle", "red", 0, 0), O("cross", "blue", 3, 3)], False),
])
def test_near_misses(prompt, scene, expected):
  assert scene_judge(scene, prompt) == expected


def test_relations():
  box = lambda r, c: (8 * c + 1, 8 * r + 1, 8 * c + 7, 8 * r + 7)
  assert judge.relations(box(0, 0), box(0, 1)) == {"left of"}
  assert judge.relations(box(1, 1), box(0, 0)) == {"right of", "below"}
  assert judge.relations(box(0, 0), box(2, 1)) == {"above"}
  assert judge.relations((0, 0, 10, 10), (1, 1, 11, 11)) == set()


def test_save_grid(tmp_path):
  rng = np.random.default_rng(0)
  images = np.stack([world.render(world.sample_scene(s, rng))
                     for s in world.all_specs()[:5]])
  path = tmp_path / "a" / "grid.png"
  grid.save_grid(path, images, ncols=3, scale=2)
  assert Image.open(path).size == (3 * 64 + 2 * 2, 2 * 64 + 2)

  captions = [s.text for s in world.all_specs()[-5:]]
  marks = [True, False, True, True, False]
  returned = grid.save_grid(path, images, ncols=3, captions=captions, marks=marks,
                            title="After GvU", row_labels=["counting", "colors"])
  with Image.open(path) as im:
    pixels = np.asarray(im.convert("RGB"))
  np.testing.assert_array_equal(returned, pixels)
  # the first tile's corner: below the title and legend, right of the row labels
  top, left = np.argwhere((pixels == grid.MARK_COLORS[True]).all(-1))[0]
  assert top > 20 and left > 20 and (pixels[:top] < 128).all(-1).any()   # text above
  assert (pixels[top:top + 128, :left] < 128).all(-1).any()              # a row label
  assert pixels.shape[1] == left + 3 * 128 + 2 * 2
  b = grid.BORDER
  for i, mark in enumerate(marks):
    y = top + (i // 3) * (pixels.shape[0] - top + grid.GAP) // 2
    x = left + (i % 3) * (128 + grid.GAP)
    assert tuple(pixels[y, x]) == grid.MARK_COLORS[mark]
    tile = images[i].repeat(4, 0).repeat(4, 1)
    np.testing.assert_array_equal(pixels[y + b:y + 128 - b, x + b:x + 128 - b],
                                  tile[b:128 - b, b:128 - b])
