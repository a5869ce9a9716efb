"""Tests for the shapes world: rendering, codebook, prompts and sampling."""
import collections
import itertools

import numpy as np
import pytest

import helpers_model as hm
from gvu_jax import world
from gvu_jax.data import batches
from gvu_jax.world import judge


def random_scene(rng, max_objects=world.NUM_CELLS):
  n = rng.integers(0, max_objects + 1)
  cells = rng.choice(world.NUM_CELLS, size=n, replace=False)
  return tuple(world.Object(world.SHAPES[rng.integers(len(world.SHAPES))],
                            world.COLORS[rng.integers(len(world.COLORS))],
                            c // world.GRID, c % world.GRID) for c in cells)


def test_codebook_layout():
  table = world.patch_table()
  assert table.shape == (world.CODEBOOK_SIZE, world.CELL, world.CELL, 3)
  assert table.dtype == np.uint8
  assert not table[0].any()
  assert world.code_of("circle", "red") == 1
  assert world.code_of("cross", "orange") == world.CODEBOOK_SIZE - 1
  # Every object keeps a 1-pixel empty margin inside its cell.
  assert not table[:, [0, -1]].any() and not table[:, :, [0, -1]].any()


def test_render_codes_round_trip():
  rng = np.random.default_rng(0)
  scenes = [random_scene(rng) for _ in range(200)]
  codes = np.stack([world.scene_to_codes(s) for s in scenes])
  images = np.stack([world.render(s) for s in scenes])
  assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(world.image_to_codes(images), codes)
  np.testing.assert_array_equal(world.codes_to_image(codes), images)


def test_render_places_object_in_cell():
  image = world.render((world.Object("square", "blue", 1, 2),))
  ys, xs = np.nonzero(image.any(-1))
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 14, 17, 22)
  assert tuple(image[10, 18]) == world.PALETTE["blue"]


def test_two_objects_in_one_cell_rejected():
  with pytest.raises(ValueError):
    world.scene_to_codes((world.Object("square", "blue", 0, 0),
                          world.Object("circle", "red", 0, 0)))


def test_shapes_distinct():
  masks = [world.shape_mask(s) for s in world.SHAPES]
  sizes = [m.sum() for m in masks]
  assert min(sizes) >= 0.5 * max(sizes)
  for a, b in itertools.combinations(masks, 2):
    assert (a & b).sum() / (a | b).sum() < 0.9


def test_palette_far_apart():
  colors = np.array(list(world.PALETTE.values()), float)
  assert set(world.PALETTE) == set(world.COLORS)
  dists = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
  assert dists[~np.eye(len(colors), dtype=bool)].min() > 100
  assert colors.max(-1).min() > 2 * judge.BACKGROUND_MAX


def test_all_specs():
  specs = world.all_specs()
  counts = collections.Counter(s.category for s in specs)
  assert counts == {"single_object": 4, "two_object": 6, "counting": 16,
                    "colors": 24, "position": 48, "color_attr": 180}
  texts = [s.text for s in specs]
  assert len(set(texts)) == len(texts)
  assert len(set(specs)) == len(specs)  # Hashable and distinct.
  vocab = set(world.vocabulary())
  for text in texts:
    assert text.startswith("a photo of ") and text == " ".join(text.split())
    assert set(text.split()) <= vocab


@pytest.mark.parametrize("objects,relation,category,text", [
    ((("circle", None, 1),), None, "single_object", "a photo of a circle"),
    ((("circle", None, 1), ("square", None, 1)), None, "two_object",
     "a photo of a circle and a square"),
    ((("circle", None, 3),), None, "counting", "a photo of three circles"),
    ((("circle", None, 1),), None, "counting", "a photo of one circle"),
    ((("cross", None, 2),), None, "counting", "a photo of two crosses"),
    ((("circle", "red", 1),), None, "colors", "a photo of a red circle"),
    ((("circle", None, 1), ("square", None, 1)), "left of", "position",
     "a photo of a circle left of a square"),
    ((("circle", "red", 1), ("square", "orange", 1)), None, "color_attr",
     "a photo of a red circle and an orange square"),
])
def test_spec_text(objects, relation, category, text):
  spec = world.PromptSpec(category, objects, relation)
  assert spec.text == text
  assert spec in world.all_specs()


def test_split_specs():
  pretrain, gvu, heldout = world.split_specs(seed=3)
  assert world.split_specs(seed=3) == (pretrain, gvu, heldout)
  assert world.split_specs(seed=4) != (pretrain, gvu, heldout)
  assert gvu == [] and not set(pretrain) & set(heldout)
  assert sorted(pretrain + heldout, key=world.all_specs().index) == world.all_specs()
  for category in world.CATEGORIES:
    n = sum(s.category == category for s in world.all_specs())
    n_held = sum(s.category == category for s in heldout)
    assert n_held == min(max(1, round(0.2 * n)), n - 1)


def test_split_specs_with_gvu_prompts():
  three = world.split_specs(seed=3, gvu_fraction=0.3)
  assert three.heldout == world.split_specs(seed=3).heldout   # judged alike
  assert sorted(sum(three, []), key=world.all_specs().index) == world.all_specs()
  for category in world.CATEGORIES:
    counts = [sum(s.category == category for s in part) for part in three]
    assert min(counts) >= 1, (category, counts)
  with pytest.raises(ValueError, match="gvu_fraction=0.9"):
    world.split_specs(seed=3, gvu_fraction=0.9)


def test_sample_scene_deterministic_and_judged_true():
  for spec in world.all_specs():
    scene = world.sample_scene(spec, np.random.default_rng(7))
    assert scene == world.sample_scene(spec, np.random.default_rng(7))
    assert len(scene) == sum(count for _, _, count in spec.objects)
    assert judge.judge(world.render(scene), spec), spec.text


def test_distractors():
  rng = np.random.default_rng(0)
  for spec in world.all_specs():
    image = world.render(world.sample_scene(spec, rng))
    ds = world.distractors(spec, image, 3, np.random.default_rng(1))
    assert ds == world.distractors(spec, image, 3, np.random.default_rng(1))
    assert ds and len(ds) <= 3
    assert len({d.text for d in ds} | {spec.text}) == len(ds) + 1
    for d in ds:
      assert d.category == spec.category
      assert not judge.judge(image, d), (spec.text, d.text)


def test_distractors_prefer_near_misses():
  spec = world.PromptSpec("color_attr", (("circle", "red", 1),
                                         ("square", "blue", 1)))
  image = world.render((world.Object("circle", "red", 0, 0),
                        world.Object("square", "blue", 3, 3)))
  ds = world.distractors(spec, image, 1, np.random.default_rng(0))
  assert [d.text for d in ds] == ["a photo of a blue circle and a red square"]


def test_near_miss_changes_what_the_category_tests():
  for spec in world.all_specs():
    for seed in range(3):
      rng = np.random.default_rng(seed)
      miss = world.near_miss(spec, rng)
      assert miss.category == spec.category and miss.text != spec.text
      if spec.category == "position":
        assert (miss.objects, miss.relation) == (spec.objects, world.OPPOSITE[spec.relation])
      elif spec.category == "color_attr":
        (a, ca, _), (b, cb, _) = spec.objects
        assert miss.objects == ((a, cb, 1), (b, ca, 1))
      else:   # one field of one object: the shape, the count or the colour
        changed = [(x, y) for o, m in zip(spec.objects, miss.objects)
                   for x, y in zip(o, m) if x != y]
        assert len(changed) == 1, (spec.text, miss.text)
        if spec.category == "counting":
          assert abs(changed[0][0] - changed[0][1]) == 1
      for _ in range(3):   # no render of the near miss satisfies the prompt
        assert not judge.judge(world.render(world.sample_scene(miss, rng)), spec), miss.text


def test_one_attribute_changes_are_the_near_misses_and_the_shape_swaps():
  """world.one_attribute_changes, for every prompt: each differs in one attribute
  (the near misses, or one object's shape replaced by one the prompt does not
  name), and no render of it satisfies the prompt."""
  rng = np.random.default_rng(0)
  for spec in world.all_specs():
    changes = world.one_attribute_changes(spec)
    misses = {world.near_miss(spec, np.random.default_rng(s)) for s in range(30)}
    assert misses <= set(changes), spec.text
    for wrong in changes:
      assert wrong.category == spec.category and wrong.text != spec.text
      if wrong not in misses:   # a shape swap: one object, only its shape
        changed = [(o, w) for o, w in zip(spec.objects, wrong.objects) if o != w]
        assert len(changed) == 1 and wrong.relation == spec.relation, wrong.text
        (old, new), = changed
        assert old[1:] == new[1:] and new[0] not in {o[0] for o in spec.objects}
      assert not judge.judge(world.render(world.sample_scene(wrong, rng)), spec), wrong.text
    named = {o[0] for o in spec.objects}
    swaps = len(spec.objects) * (len(world.SHAPES) - len(named))
    assert len(changes) == len(misses | set(changes)) <= len(misses) + swaps


def test_mislabelled_text_to_image_pairs_keep_the_captions_exact():
  """pretrain.t2i_mislabel: with probability q a text->image target shows a near
  miss of its prompt; the captioning pairs (and the prompts) are those of q = 0."""
  specs = world.all_specs()
  make = lambda q: batches.supervised_batch(hm.templates(), specs, 64,
                                            np.random.default_rng(5), 0.0, q)
  prompts = batches.prompt_batch(specs, 64, np.random.default_rng(5))
  exact, noisy, all_wrong = make(0.0), make(0.5), make(1.0)
  np.testing.assert_array_equal(exact["codes"], exact["caption_codes"])
  for batch in (noisy, all_wrong):
    np.testing.assert_array_equal(batch["caption_codes"], exact["caption_codes"])
    np.testing.assert_array_equal(batch["prompt_ids"], exact["prompt_ids"])
  right = lambda codes: [judge.judge(world.codes_to_image(c), s) for c, s in zip(codes, prompts)]
  assert all(right(exact["caption_codes"]))
  assert not any(right(all_wrong["codes"]))
  mislabelled = (noisy["codes"] != exact["codes"]).any(1)
  assert 20 <= mislabelled.sum() <= 44   # Binomial(64, 0.5): within 3 sigma
  np.testing.assert_array_equal(right(noisy["codes"]), ~mislabelled)


@pytest.mark.parametrize("mislabel, split", [(0.0, "all"), (0.3, "pretrain")])
def test_near_miss_images_come_from_the_split_and_leave_the_batch_as_it_was(mislabel, split):
  """pretrain.near_miss_ranking's negatives: per prompt a render of another prompt
  of the same split that differs in one attribute (so the judge rejects the
  prompt on it), or, where the split has none, a row marked invalid; every other
  array is that of a batch drawn without them."""
  specs = world.all_specs() if split == "all" else world.split_specs(0, 0.2, 0.3).pretrain
  make = lambda extra: batches.supervised_batch(hm.templates(), specs, 96,
                                                np.random.default_rng(7), 0.1, mislabel,
                                                near_miss_images=extra)
  plain, ranked = make(False), make(True)
  assert set(ranked) == set(plain) | {"near_miss_codes", "near_miss_valid"}
  for key, value in plain.items():
    np.testing.assert_array_equal(ranked[key], value, err_msg=key)
  prompts = batches.prompt_batch(specs, 96, np.random.default_rng(7))
  for codes, valid, spec in zip(ranked["near_miss_codes"], ranked["near_miss_valid"], prompts):
    image = world.codes_to_image(codes)
    options = [w for w in world.one_attribute_changes(spec) if w in set(specs)]
    assert valid == bool(options)
    if valid:
      assert not judge.judge(image, spec) and any(judge.judge(image, w) for w in options)
  assert ranked["near_miss_valid"].all() if split == "all" else ranked["near_miss_valid"].any()


def test_the_ceiling_reward_is_the_judge_verdict_per_image():
  """reward.kind=judge: each of a prompt's G images gets 1 where the judge accepts
  it for that prompt, 0 where not (here: true renders and near-miss renders)."""
  from gvu_jax.rl import controls
  rng = np.random.default_rng(11)
  specs = world.all_specs()[::7]
  codes, expected = [], []
  for spec in specs:
    for right in (True, False, True):
      scene = world.sample_scene(spec if right else world.near_miss(spec, rng), rng)
      codes.append(world.scene_to_codes(scene))
      expected.append(float(right))
  verdicts = controls.judge_verdicts([s.text for s in specs], np.stack(codes), group_size=3)
  assert verdicts.dtype == np.float32
  np.testing.assert_array_equal(verdicts, expected)


# --- the batch prefetch thread ---------------------------------------------------

@pytest.mark.parametrize("error", [ValueError("need at least one array"), ZeroDivisionError(),
                                   KeyError("x"), MemoryError()])
@pytest.mark.parametrize("fail_at, depth", [(0, 1), (0, 2), (1, 2), (3, 1), (3, 4), (5, 2)])
def test_an_error_in_the_prefetch_thread_reaches_the_consumer(error, fail_at, depth):
  """make_batch raising at any step, whatever it raises and however far ahead the
  thread runs: the consumer gets every batch before it, then the same exception,
  and never waits forever on a batch that will not come."""
  import threading

  def make_batch(step):
    if step == fail_at:
      raise error
    return step

  got, raised = [], []

  def consume():
    try:
      for batch in batches.prefetch(make_batch, range(6), depth=depth):
        got.append(batch)
    except BaseException as e:  # noqa: BLE001
      raised.append(e)

  consumer = threading.Thread(target=consume, daemon=True)
  consumer.start()
  consumer.join(timeout=30)
  assert not consumer.is_alive(), "the consumer hung"
  assert got == list(range(fail_at)) and raised == [error]
