"""Tests for the GvU intrinsic reward (docs/design.md §2): the one-forward token
log-likelihoods against the reference algorithm (one forward per prompt token,
one image at a time), the aggregations, token weights and the judge choice."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import helpers_model as hm
from gvu_jax import world
from gvu_jax.infra import pixels as pixels_lib
from gvu_jax.infra.errors import InputError
from gvu_jax.models import lora, presets, umm
from gvu_jax.rl import reward, step
from gvu_jax.text import synthetic as text
from gvu_jax.world.codebook import CellTokenizer

# Prompts of 5, 6, 8 and 6 words: different lengths -> right padding in the batch.
# (The reference loop compiles once per prefix length, so at most 8 times.)
PROMPTS = ("a photo of a circle", "a photo of two crosses",
           "a photo of a square above a triangle", "a photo of a red square")


@pytest.fixture(scope="module")
def setup():
  cfg = presets.synthetic("mini")
  tok = text.synthetic_tokenizer()
  templates = text.Templates(tok, cfg.image_tokens, cfg.max_prompt_tokens)
  return cfg, tok, templates


@pytest.fixture(scope="module")
def lora_model(setup):
  """A LoRA model: (graphdef, base, fresh adapters (B = 0), nonzero adapters)."""
  cfg, _, _ = setup
  graphdef, params = hm.host_init(cfg, 0, lora_rank=2, lora_alpha=4.0)
  base, adapters = lora.split(params)
  rng = np.random.default_rng(7)
  trained = jax.tree.map(lambda x: jnp.asarray(x + 0.5 * rng.standard_normal(x.shape),
                                               jnp.float32), adapters)
  return graphdef, base, adapters, trained


# XLA's CPU backend takes seconds to optimise each program on 2 cores; the tests
# check what is computed, so they compile without backend optimisation.
FAST = hm.FAST


@pytest.fixture(scope="module")
def pixels():
  codes = np.random.default_rng(3).integers(0, world.CODEBOOK_SIZE,
                                            (len(PROMPTS), world.NUM_CELLS))
  return CellTokenizer().decode(jnp.asarray(codes, jnp.int32))


@pytest.fixture(scope="module")
def reward_fn_for(setup, lora_model, pixels):
  """judge, aggregation, weights -> rl/step.py make_reward_fn's jitted
  (trainable, frozen, pixels, query) -> (reward, token logp), compiled for this batch."""
  _, _, templates = setup
  graphdef, base, adapters, _ = lora_model
  example = (adapters, base, pixels, templates.understanding(list(PROMPTS)).arrays())

  def make(judge, aggregation="geo_mean_prob", weights=None, quantize_pixels=True):
    r = ml_collections.ConfigDict(dict(kind="intrinsic", aggregation=aggregation, judge=judge,
                                       token_weights={}, quantize_pixels=quantize_pixels))
    fn = step.make_reward_fn(graphdef, lora.Roles(True), r, weights)
    return fn.lower(*example).compile(compiler_options=FAST)

  return make


@pytest.fixture(scope="module")
def policy_fn(reward_fn_for):
  return reward_fn_for("policy")


def test_prompts_come_from_the_world():
  texts = {s.text for s in world.all_specs()}
  assert set(PROMPTS) <= texts


def reference_token_logprobs(forward, params, batch, pixels, b, length):
  """The reference algorithm: one full forward per answer token, one image at a
  time, over exactly the prefix query + y_<i (no padding); the LAST position's
  log-softmax read at y_i."""
  out = []
  for i in range(length):
    prefix = batch.ids[b, :batch.answer_start + i][None]
    logp_next = np.asarray(forward(params, jnp.asarray(prefix), pixels[b:b + 1]))
    out.append(logp_next[batch.ids[b, batch.answer_start + i]])
  return np.array(out)


def test_one_forward_equals_reference_algorithm(setup, lora_model, policy_fn, pixels):
  _, _, templates = setup
  graphdef, base, _, trained = lora_model
  batch = templates.understanding(list(PROMPTS))
  lengths = [len(p.split()) for p in PROMPTS]
  np.testing.assert_array_equal(batch.answer_mask.sum(1), lengths)
  assert len(set(lengths)) > 1 and not batch.valid.all()   # really right-padded

  r, token_logp = policy_fn(trained, base, pixels, batch.arrays())
  token_logp = np.asarray(token_logp)
  assert token_logp.shape == batch.answer_mask.shape

  params = lora.merge(base, trained)   # the policy judge: base + adapters
  image_id = templates.image_token_id

  @functools.partial(jax.jit, compiler_options=FAST)   # one compilation per prefix length
  def forward(p, ids, px):
    """A full forward over the prefix -> log-softmax at its LAST position."""
    logits = umm.text_logits(nnx.merge(graphdef, p), ids, jnp.ones(ids.shape, bool),
                               ids == image_id, px)
    return jax.nn.log_softmax(logits[0, -1])

  for b, n in enumerate(lengths):
    expected = reference_token_logprobs(forward, params, batch, pixels, b, n)
    np.testing.assert_allclose(token_logp[b, :n], expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(token_logp[b, n:], 0.0)   # padding reads as 0
    np.testing.assert_allclose(float(r[b]), np.exp(expected.mean()), rtol=1e-5)
  # Genuine log-probabilities, not all alike.
  assert (token_logp[batch.answer_mask] < 0).all()
  assert np.std(token_logp[batch.answer_mask]) > 1e-3


def test_reward_depends_on_image(setup, lora_model, policy_fn, pixels):
  _, _, templates = setup
  graphdef, base, _, trained = lora_model
  query = templates.understanding([PROMPTS[0]] * len(PROMPTS)).arrays()
  _, token_logp = policy_fn(trained, base, pixels, query)
  assert np.abs(np.asarray(token_logp[0]) - np.asarray(token_logp[1])).max() > 1e-4


# --- aggregations on a hand-made token vector ---------------------------------

L = np.array([[-0.5, -1.0, -2.0, 7.0], [-0.25, 3.0, 5.0, 9.0]], np.float32)   # 7, 3, 5, 9: padding
MASK = np.array([[True, True, True, False], [True, False, False, False]])


def test_aggregations_ignore_padding():
  got = {k: np.asarray(reward.aggregate(jnp.asarray(L), jnp.asarray(MASK), k))
         for k in ("geo_mean_prob", "prob", "mean_logprob")}
  np.testing.assert_allclose(got["mean_logprob"], [-3.5 / 3, -0.25], rtol=1e-6)
  np.testing.assert_allclose(got["geo_mean_prob"], np.exp([-3.5 / 3, -0.25]), rtol=1e-6)
  np.testing.assert_allclose(got["prob"], np.exp([-3.5, -0.25]), rtol=1e-6)
  w = np.array([[2.0, 1.0, 0.0, 5.0], [3.0, 4.0, 4.0, 4.0]], np.float32)
  weighted = reward.aggregate(jnp.asarray(L), jnp.asarray(MASK), "weighted", jnp.asarray(w))
  np.testing.assert_allclose(weighted, [np.exp((2 * -0.5 + 1 * -1.0) / 3), np.exp(-0.25)],
                             rtol=1e-6)


def test_unknown_aggregation_raises():
  with pytest.raises(InputError, match="median"):
    reward.aggregate(jnp.asarray(L), jnp.asarray(MASK), "median")


def test_token_weight_table(setup):
  cfg, tok, _ = setup
  table = reward.token_weight_table(tok, {"photo": 0.0, "red": 2.5}, cfg.lm.vocab_size)
  assert table.shape == (cfg.lm.vocab_size,)
  assert table[tok.token_to_id("photo")] == 0.0
  assert table[tok.token_to_id("red")] == 2.5
  others = np.delete(table, [tok.token_to_id("photo"), tok.token_to_id("red")])
  np.testing.assert_array_equal(others, 1.0)


def test_unknown_word_in_token_weights_raises(setup):
  cfg, tok, _ = setup
  with pytest.raises(InputError, match="zebra"):
    reward.token_weight_table(tok, {"a": 0.0, "zebra": 0.0}, cfg.lm.vocab_size)


def test_weighted_reward_drops_template_words(setup, lora_model, reward_fn_for, policy_fn,
                                              pixels):
  cfg, tok, templates = setup
  graphdef, base, _, trained = lora_model
  table = reward.token_weight_table(tok, {"a": 0.0, "photo": 0.0, "of": 0.0},
                                    cfg.lm.vocab_size)
  weighted_fn = reward_fn_for("policy", "weighted", jnp.asarray(table))
  query = templates.understanding(list(PROMPTS)).arrays()
  weighted, token_logp = weighted_fn(trained, base, pixels, query)
  geo, token_logp2 = policy_fn(trained, base, pixels, query)
  np.testing.assert_allclose(token_logp, token_logp2, atol=1e-6)   # the same vector
  token_logp = np.asarray(token_logp)
  for b, prompt in enumerate(PROMPTS):
    words = prompt.split()
    keep = [i for i, w in enumerate(words) if w not in ("a", "photo", "of")]
    assert 0 < len(keep) < len(words)
    np.testing.assert_allclose(float(weighted[b]), np.exp(token_logp[b, keep].mean()),
                               rtol=1e-5)
  assert np.abs(np.asarray(weighted) - np.asarray(geo)).max() > 1e-4


# --- judge choice ------------------------------------------------------------

def test_judge_policy_or_reference(setup, lora_model, reward_fn_for, policy_fn, pixels):
  _, _, templates = setup
  graphdef, base, adapters, trained = lora_model
  reference_fn = reward_fn_for("reference")
  query = templates.understanding(list(PROMPTS)).arrays()

  # Fresh adapters (B = 0): policy == reference.
  b_leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(adapters)
              if path[-1].key == "lora_b"]
  assert b_leaves and not any(np.any(x) for x in b_leaves)
  r_pol, t_pol = policy_fn(adapters, base, pixels, query)
  r_ref, t_ref = reference_fn(adapters, base, pixels, query)
  np.testing.assert_allclose(r_pol, r_ref, rtol=1e-6)
  np.testing.assert_allclose(t_pol, t_ref, atol=1e-6)

  # Nonzero adapters: the policy judge sees them, the reference judge does not.
  r_pol2, _ = policy_fn(trained, base, pixels, query)
  r_ref2, t_ref2 = reference_fn(trained, base, pixels, query)
  assert np.abs(np.asarray(r_pol2) - np.asarray(r_ref2)).max() > 1e-4
  np.testing.assert_allclose(r_ref2, r_ref, rtol=1e-6)
  np.testing.assert_allclose(t_ref2, t_ref, atol=1e-6)
  # The reference judge is the base alone: the policy with the adapters zeroed.
  r_base, _ = policy_fn(jax.tree.map(jnp.zeros_like, trained), base, pixels, query)
  np.testing.assert_allclose(r_ref2, r_base, rtol=1e-6)


# --- what the judge sees -----------------------------------------------------

def test_reward_scores_the_8bit_image(setup, reward_fn_for, policy_fn, lora_model, pixels):
  """By default the reward reads the decoded image rounded to 8 bits (what a saved
  PNG holds); quantize_pixels=False reads the raw floats."""
  _, _, templates = setup
  _, base, _, trained = lora_model
  query = templates.understanding(list(PROMPTS)).arrays()
  # Off the 8-bit grid by up to 0.45 of a level, as a VQ decoder's floats are.
  offset = np.random.default_rng(5).uniform(-0.45, 0.45, pixels.shape) / 127.5
  floats = jnp.clip(pixels + offset.astype(np.float32), -1.0, 1.0)
  saved = pixels_lib.on_8bit_grid(floats)
  np.testing.assert_array_equal(np.asarray(pixels_lib.to_uint8(saved)),
                                np.asarray(pixels_lib.to_uint8(floats)))
  raw_fn = reward_fn_for("policy", quantize_pixels=False)
  r_default, t_default = policy_fn(trained, base, floats, query)
  r_saved, t_saved = raw_fn(trained, base, saved, query)
  np.testing.assert_array_equal(r_default, r_saved)
  np.testing.assert_array_equal(t_default, t_saved)
  r_raw, _ = raw_fn(trained, base, floats, query)
  assert np.abs(np.asarray(r_raw) - np.asarray(r_saved)).max() > 1e-7
