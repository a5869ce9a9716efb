"""Tests for the image-token sampler: determinism, log-probs against teacher
forcing, classifier-free guidance, the sampling filters and compilation count."""

import jax
import numpy as np
import pytest

import helpers_model as hm
from gvu_jax import world
from gvu_jax.infra.errors import InputError
from gvu_jax.rl import sampling

G = 2          # samples per prompt
B = 2          # prompts per batch: B * G = 4 rows, the shape of hm.prompts()
CFG_W = 3.0
GREEDY_W = 2.0


def make_sampler(graphdef, **cfg):
  return sampling.Sampler(graphdef, sampling.SamplingConfig(**cfg), num_tokens=world.NUM_CELLS,
                          uncond_row=hm.templates().unconditional(1), group_size=G)


@pytest.fixture(scope="module")
def model():
  return hm.mini()


@pytest.fixture(scope="module")
def prompts():
  return hm.prompts(B)


@pytest.fixture(scope="module")
def plain(model):
  return make_sampler(model[0])


@pytest.fixture(scope="module")
def plain_samples(model, plain, prompts):
  return plain(model[1], *prompts, jax.random.key(0))


@pytest.fixture(scope="module")
def guided(model):
  return make_sampler(model[0], cfg_weight=CFG_W)


@pytest.fixture(scope="module")
def guided_samples(model, prompts, guided):
  return guided(model[1], *prompts, jax.random.key(1))


@pytest.fixture(scope="module")
def greedy(model):
  return make_sampler(model[0], top_k=1, cfg_weight=GREEDY_W, temperature=0.7)


def rows(prompts):
  """The prompts as the sampler's rows: prompt-major, G rows each."""
  return tuple(np.repeat(a, G, 0) for a in prompts)


def teacher_forced(model, ids, valid, codes):
  return hm.image_logits(*model, ids, valid, codes)


def uncond_rows(n):
  ids, valid = hm.templates().unconditional(n)
  assert valid.sum() == 2 * n
  return ids, valid


# --- Outputs and determinism -----------------------------------------------------


@pytest.mark.parametrize("which", ["plain_samples", "guided_samples"])
def test_sample_shapes_and_range(request, which):
  s = request.getfixturevalue(which)
  assert s.codes.shape == (B * G, world.NUM_CELLS) and s.codes.dtype == np.int32
  assert s.logp_sampled.shape == s.codes.shape
  codes = np.asarray(s.codes)
  assert codes.min() >= 0 and codes.max() < world.CODEBOOK_SIZE
  assert len(np.unique(codes)) > 5      # a random-init model at temperature 1 is broad
  logp = np.asarray(s.logp_sampled)
  assert logp.dtype == np.float32 and np.isfinite(logp).all() and (logp <= 0).all()


def test_same_key_same_samples(model, plain, prompts, plain_samples):
  again = plain(model[1], *prompts, jax.random.key(0))
  for name in ("codes", "logp_sampled"):
    np.testing.assert_array_equal(getattr(again, name), getattr(plain_samples, name))
  other = plain(model[1], *prompts, jax.random.key(42))
  assert (np.asarray(other.codes) != np.asarray(plain_samples.codes)).mean() > 0.3


def test_group_rows_are_independent_draws(plain_samples):
  codes = np.asarray(plain_samples.codes)
  for b in range(B):
    assert (codes[b * G] != codes[b * G + 1]).mean() > 0.3


def test_uniform_model_samples_uniformly(model, plain, prompts):
  """With a zeroed gen_head every step is uniform: fresh noise at every step and
  row gives varied codes (a key reused across steps would repeat one code)."""
  params = jax.tree.map(lambda x: x, model[1])
  params["gen_head"]["fc2"] = jax.tree.map(jax.numpy.zeros_like, params["gen_head"]["fc2"])
  codes = []
  for seed in range(3):
    s = plain(params, *prompts, jax.random.key(100 + seed))
    np.testing.assert_allclose(s.logp_sampled, -np.log(world.CODEBOOK_SIZE), atol=1e-5)
    codes.append(np.asarray(s.codes))
  codes = np.concatenate(codes)
  assert min(len(np.unique(row)) for row in codes) >= 5
  assert len(np.unique(codes)) >= 20
  assert (codes[:, 1:] != codes[:, :-1]).mean() > 0.8


# --- Log-probs against teacher forcing -------------------------------------------


def test_cfg_off_samples_from_the_policy(model, prompts, plain_samples):
  """No CFG, temperature 1, no filter: each token's log-prob is the policy's,
  teacher-forced (the KV-cache decode reads what one full forward reads)."""
  codes = np.asarray(plain_samples.codes)
  logits = teacher_forced(model, *rows(prompts), codes)
  np.testing.assert_allclose(hm.log_softmax_at(logits, codes), plain_samples.logp_sampled,
                             atol=1e-4, rtol=0)


def test_lora_adapters_merged_once_sample_the_adapted_policy(prompts):
  """The rollout folds LoRA adapters into their kernels: the tokens' log-probs
  are those of the unmerged policy (adapters applied at each layer), and not
  those of the base model."""
  graphdef, params = hm.mini_lora()
  rng = np.random.default_rng(5)
  adapted = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 * rng.standard_normal(x.shape).astype(x.dtype)
      if path[-1].key == "lora_b" else x, params)
  s = make_sampler(graphdef)(adapted, *prompts, jax.random.key(4))
  codes = np.asarray(s.codes)
  policy = teacher_forced((graphdef, adapted), *rows(prompts), codes)
  base = teacher_forced((graphdef, params), *rows(prompts), codes)
  np.testing.assert_allclose(hm.log_softmax_at(policy, codes), s.logp_sampled, atol=1e-4)
  assert np.abs(hm.log_softmax_at(base, codes) - s.logp_sampled).max() > 1e-2


@pytest.mark.parametrize("prompt_len,num_tokens,expected", [
    (9, 16, [9, 15]),                           # fewer image slots than a segment
    (32, 256, [32] + [32] * 7 + [31]),          # the small preset: runs of MIN_SEGMENT
    (64, 576, [64] + [72] * 7 + [71]),          # Janus: MAX_SEGMENTS runs
    (5, 2, [5, 1]),
    (5, 1, [5])])                               # one token: no slot is ever fed back
def test_cache_segments(prompt_len, num_tokens, expected):
  segments = sampling.cache_segments(prompt_len, num_tokens)
  assert segments == expected and sum(segments) == prompt_len + num_tokens - 1


def test_a_segmented_cache_samples_the_same(model, prompts, guided_samples, monkeypatch):
  """Decode steps read the prompt and the cache segments filled so far: with
  runs of 3 slots (six segments) the draws and log-probs are those of one."""
  monkeypatch.setattr(sampling, "MIN_SEGMENT", 3)
  assert sampling.cache_segments(4, world.NUM_CELLS) == [4, 3, 3, 3, 3, 3]
  s = make_sampler(model[0], cfg_weight=CFG_W)(model[1], *prompts, jax.random.key(1))
  np.testing.assert_array_equal(s.codes, guided_samples.codes)
  np.testing.assert_allclose(s.logp_sampled, guided_samples.logp_sampled, atol=1e-5)


def guided_teacher_forced(model, prompt_rows, codes):
  """log-probs of `codes` under u + w (c - u), teacher-forced, in float64."""
  cond = teacher_forced(model, *prompt_rows, codes).astype(np.float64)
  uncond = teacher_forced(model, *uncond_rows(B * G), codes).astype(np.float64)
  return hm.log_softmax_at(uncond + CFG_W * (cond - uncond), codes), cond


def test_cfg_guided_distribution(model, prompts, guided_samples):
  s = guided_samples
  codes = np.asarray(s.codes)
  guided, cond = guided_teacher_forced(model, rows(prompts), codes)
  np.testing.assert_allclose(guided, s.logp_sampled, atol=1e-4, rtol=0)
  # Guidance really changed the distribution (the check above is not vacuous).
  assert np.abs(np.asarray(s.logp_sampled) - hm.log_softmax_at(cond, codes)).max() > 1e-2


def test_samples_are_prompt_major(model, prompts, guided_samples):
  """Rows b*G .. b*G+G-1 belong to prompt b: teacher forcing with the prompts
  repeated matches, with the prompts tiled (G-major) it does not."""
  s = guided_samples
  codes = np.asarray(s.codes)
  tiled = tuple(np.tile(a, (G, 1)) for a in prompts)
  assert not np.array_equal(tiled[0], rows(prompts)[0])
  wrong, _ = guided_teacher_forced(model, tiled, codes)
  assert np.abs(wrong - np.asarray(s.logp_sampled)).max() > 1e-2


def test_greedy_is_argmax_of_guided_logits(model, prompts, greedy):
  w = GREEDY_W
  s = greedy(model[1], *prompts, jax.random.key(3))
  codes = np.asarray(s.codes)
  cond = teacher_forced(model, *rows(prompts), codes)
  uncond = teacher_forced(model, *uncond_rows(B * G), codes)
  guided = uncond + w * (cond - uncond)
  np.testing.assert_array_equal(codes, guided.argmax(-1))
  np.testing.assert_allclose(s.logp_sampled, 0.0, atol=1e-6)
  # Greedy: the G rows of a prompt are identical, different prompts differ.
  np.testing.assert_array_equal(codes[0::G], codes[1::G])
  assert not np.array_equal(codes[0], codes[G])


# --- One compilation per shape ---------------------------------------------------


def test_one_compilation_per_shape(model, prompts, greedy):
  """(The greedy sampler: this adds no sampler compilation of its own.)"""
  params = model[1]
  first = greedy(params, *prompts, jax.random.key(3))
  assert greedy.compilations() == 1
  other_prompts = hm.templates().generation([s.text for s in world.all_specs()[40:40 + B]])
  for i, p in enumerate((prompts, other_prompts, prompts)):
    greedy(params, *p, jax.random.key(10 + i))
  assert greedy.compilations() == 1
  one = greedy(params, *hm.prompts(1), jax.random.key(0))
  assert one.codes.shape == (G, world.NUM_CELLS)
  assert greedy.compilations() == 2
  np.testing.assert_array_equal(one.codes, first.codes[:G])   # greedy: same first prompt
  # Back to the first shape: no new compilation, same samples as before.
  again = greedy(params, *prompts, jax.random.key(3))
  assert greedy.compilations() == 2
  for name in ("codes", "logp_sampled"):
    np.testing.assert_array_equal(getattr(again, name), getattr(first, name))


def test_numpy_params_do_not_count_as_a_compilation(model, prompts, guided, guided_samples):
  count = guided.compilations()
  again = guided(jax.tree.map(np.asarray, model[1]), *prompts, jax.random.key(1))
  np.testing.assert_array_equal(again.codes, guided_samples.codes)   # same program
  assert guided.compilations() == count


# --- Filters on hand-made logits -------------------------------------------------

# Probabilities out of order so that sorting matters; token 1 is the argmax.
PROBS = np.array([0.05, 0.5, 0.15, 0.3])
LOGITS = np.log(PROBS).astype(np.float32)


def kept(logits=LOGITS, **cfg):
  out = np.asarray(sampling.filter_logits(np.asarray(logits), sampling.SamplingConfig(**cfg)))
  return set(np.flatnonzero(np.isfinite(out)).tolist())


def test_filter_temperature():
  out = sampling.filter_logits(LOGITS, sampling.SamplingConfig(temperature=0.5))
  np.testing.assert_allclose(out, LOGITS / 0.5, rtol=1e-6)
  out = sampling.filter_logits(LOGITS, sampling.SamplingConfig())
  np.testing.assert_array_equal(out, LOGITS)


def test_filter_top_k():
  assert kept(top_k=1) == {1}
  assert kept(top_k=2) == {1, 3}
  assert kept(top_k=3) == {1, 2, 3}
  logits = np.random.default_rng(0).normal(size=(5, 25)).astype(np.float32)
  out = np.asarray(sampling.filter_logits(logits, sampling.SamplingConfig(top_k=7)))
  finite = np.isfinite(out)
  assert (finite.sum(-1) == 7).all()
  top7 = np.argsort(-logits, -1)[:, :7]
  assert np.take_along_axis(finite, top7, -1).all()
  np.testing.assert_array_equal(out[finite], logits[finite])
  assert (out[~finite] == -np.inf).all()


def test_filter_top_p():
  # Sorted mass: 0.5, 0.8, 0.95, 1.0 -> the smallest prefix reaching p.
  assert kept(top_p=0.4) == {1}
  assert kept(top_p=0.7) == {1, 3}
  assert kept(top_p=0.9) == {1, 3, 2}
  assert kept(top_p=0.99) == {0, 1, 2, 3}
  assert kept(top_p=1e-4) == {1}          # always keeps the argmax
  # Per row: the second row's argmax is token 0.
  two = np.stack([LOGITS, LOGITS[::-1]])
  out = np.asarray(sampling.filter_logits(two, sampling.SamplingConfig(top_p=0.7)))
  np.testing.assert_array_equal(np.isfinite(out), [[0, 1, 0, 1], [1, 0, 1, 0]])


def test_sampling_config_rejects_impossible_values():
  for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=0.0), dict(min_p=1.0),
              dict(top_k=-1)):
    with pytest.raises(InputError, match=f"sampling.{next(iter(bad))}"):
      sampling.SamplingConfig(**bad)


def test_filter_min_p():
  assert kept(min_p=0.2) == {1, 2, 3}     # floor 0.1 removes 0.05
  assert kept(min_p=0.31) == {1, 3}       # floor 0.155 removes 0.15
  assert kept(min_p=0.9) == {1}
  out = np.asarray(sampling.filter_logits(LOGITS, sampling.SamplingConfig(min_p=0.2)))
  np.testing.assert_array_equal(out[[1, 2, 3]], LOGITS[[1, 2, 3]])


def test_filter_order():
  """temperature -> top_k -> top_p -> min_p, each on what the previous left."""
  # Temperature 2 first: probs ~ sqrt(p) = .379, .294, .208, .120 (sorted), so
  # top_p 0.7 needs three tokens (two without the temperature).
  assert kept(temperature=2.0, top_p=0.7) == {1, 3, 2}
  # top_k 3 first renormalises to .526, .316, .158: top_p 0.82 stops at two
  # (top_p on the full distribution would keep three).
  assert kept(top_k=3, top_p=0.82) == {1, 3}
  # top_p before min_p: top_p 0.82 keeps .5, .3, .15 and min_p 0.2 keeps all of
  # them (min_p first would drop .05 and top_p would then stop at two).
  assert kept(top_p=0.82, min_p=0.2) == {1, 3, 2}
  # All four: T=2 -> top_k 3 -> .431, .334, .236 -> top_p 0.7 keeps two ->
  # .563, .437 -> min_p 0.8 (floor .451) keeps one; min_p 0.7 keeps both.
  assert kept(temperature=2.0, top_k=3, top_p=0.7, min_p=0.8) == {1}
  assert kept(temperature=2.0, top_k=3, top_p=0.7, min_p=0.7) == {1, 3}
  out = np.asarray(sampling.filter_logits(LOGITS, sampling.SamplingConfig(
      temperature=2.0, top_k=3, top_p=0.7, min_p=0.7)))
  np.testing.assert_allclose(out[[1, 3]], LOGITS[[1, 3]] / 2.0, rtol=1e-6)


def test_sample_categorical_matches_the_distribution():
  """Inverse-CDF sampling: frequencies within 4 sigma of the probabilities over
  100k draws; tokens removed by a filter (-inf) never drawn, even in last place;
  each draw's log-probability that of its token."""
  probs = np.array([0.1, 0.0, 0.45, 0.05, 0.4, 0.0])
  logits = np.log(np.where(probs > 0, probs, 1.0)) + np.where(probs > 0, 0.0, -np.inf)
  n = 100_000
  draws, logp = map(np.asarray, jax.jit(sampling.sample_categorical)(
      jax.random.key(7), np.broadcast_to(logits + 3.0, (n, probs.size)).astype(np.float32)))
  np.testing.assert_allclose(logp, np.log(probs[draws]), rtol=1e-6)
  freq = np.bincount(draws, minlength=probs.size) / n
  sigma = np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(freq - probs) <= 4 * sigma + 1e-12), freq
  assert freq[1] == freq[5] == 0.0


@pytest.mark.parametrize("vocab,kept", [(1, [0]), (2, [1]), (7, [0, 6]), (25, [4, 5, 24]),
                                        (100, [17]), (100, [0, 50, 99]), (16384, [9, 16383])])
def test_sample_categorical_draws_only_codes_with_mass(vocab, kept):
  """The two-level CDF search, over vocabularies with and without a ragged last
  block and mass in the first, last or a single block: every draw has mass, each
  kept code is drawn about as often as its probability, the log-prob is its own."""
  logits = np.full((4000, vocab), -np.inf, np.float32)
  logits[:, kept] = np.log(np.arange(1, len(kept) + 1, dtype=np.float32))
  draws, logp = map(np.asarray, jax.jit(sampling.sample_categorical)(jax.random.key(3), logits))
  probs = np.arange(1, len(kept) + 1) / np.arange(1, len(kept) + 1).sum()
  assert set(np.unique(draws)) <= set(kept)
  freq = np.array([(draws == k).mean() for k in kept])
  assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / 4000) + 1e-12)
  np.testing.assert_allclose(logp, np.log(probs[np.searchsorted(kept, draws)]), rtol=1e-5)


def test_a_key_per_row_draws_the_same_image_in_any_batch(model, guided):
  """Evaluation's keys (sampling.row_keys): a prompt draws the same codes alone,
  in a batch of four, or padded, so no accuracy depends on eval.batch_size or the
  number of devices."""
  ids, valid = hm.prompts(4)
  key = jax.random.key(5)
  together = np.asarray(guided(model[1], ids, valid, sampling.row_keys(key, [0, 1, 2, 3], G)).codes)
  for i in range(4):
    alone = guided(model[1], ids[i:i + 1], valid[i:i + 1], sampling.row_keys(key, [i], G))
    np.testing.assert_array_equal(np.asarray(alone.codes), together[i * G:(i + 1) * G])
  padded = guided(model[1], ids[[2, 3, 2, 2]], valid[[2, 3, 2, 2]],
                  sampling.row_keys(key, [2, 3, 2, 2], G))
  np.testing.assert_array_equal(np.asarray(padded.codes)[:2 * G], together[2 * G:])
  # and the G samples of a prompt differ from each other
  assert (together[0] != together[1]).mean() > 0.3
