"""Tests for GRPO (docs/design.md §3): group advantages, the reward-shuffle control,
the clipped-ratio loss with the k3 KL penalty and its gradient, and the jitted
update step (gradient accumulation, non-finite skip, clipping, LoRA roles). The
optimizer's own tests are test_optimizer.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import helpers_model as hm
from test_optimizer import opt_config
from gvu_jax.infra.errors import InputError
from gvu_jax.models import lora, presets
from gvu_jax.models.umm import image_logits
from gvu_jax.rl import controls, grpo, optimizer
from gvu_jax.text import synthetic as text

EPS = 1e-4   # the reference advantage eps (docs/design.md §3)


# --- group advantages --------------------------------------------------------

def test_group_advantages_hand_computed():
  rewards = jnp.array([1.0, 2.0, 3.0, 6.0, 0.2, 0.6, 0.6, 0.2])
  # group 1: mean 3, deviations (-2, -1, 0, 3), unbiased var (4 + 1 + 0 + 9) / 3
  std1 = np.sqrt(14.0 / 3.0)
  # group 2: mean 0.4, deviations (-0.2, 0.2, 0.2, -0.2), unbiased var 4 * 0.04 / 3
  std2 = np.sqrt(0.16 / 3.0)
  expected = np.concatenate([np.array([-2.0, -1.0, 0.0, 3.0]) / (std1 + EPS),
                             np.array([-0.2, 0.2, 0.2, -0.2]) / (std2 + EPS)])
  np.testing.assert_allclose(grpo.group_advantages(rewards, 4), expected, rtol=1e-5)
  jitted = jax.jit(grpo.group_advantages, static_argnums=1)
  np.testing.assert_allclose(jitted(rewards, 4), expected, rtol=1e-5)


def test_group_advantages_equal_rewards_give_zero():
  rewards = jnp.array([0.3, 0.3, 5.0, 5.0, 1.0, 2.0])
  adv = np.asarray(grpo.group_advantages(rewards, 2))
  assert np.isfinite(adv).all()
  np.testing.assert_array_equal(adv[:4], 0.0)
  assert np.abs(adv[4:]).min() > 0.5


@pytest.mark.parametrize("group_size,value", [(3, 0.1), (16, -7.3)])
def test_group_advantages_equal_rewards_give_exactly_zero_for_any_group(group_size, value):
  """The fp32 mean of G equal rewards need not be the reward itself (for these
  values it is not); the residue must not become A = residue / eps on every row."""
  adv = np.asarray(grpo.group_advantages(jnp.full((2 * group_size,), value, jnp.float32),
                                       group_size))
  np.testing.assert_array_equal(adv, 0.0)


def test_group_advantages_without_std_scaling():
  rewards = jnp.array([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
  adv = grpo.group_advantages(rewards, 4, scale_by_std=False)
  np.testing.assert_allclose(adv, [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_group_advantages_groups_are_contiguous_rows():
  # prompt-major: rows [p0 s0, p0 s1, p1 s0, p1 s1]
  adv = np.asarray(grpo.group_advantages(jnp.array([1.0, 2.0, 10.0, 20.0]), 2))
  # G = 2: A = +-d / (|d| / sqrt(2) + eps) with d half the gap
  np.testing.assert_allclose(adv, [-0.5 / (1 / np.sqrt(2) + EPS), 0.5 / (1 / np.sqrt(2) + EPS),
                                   -5 / (10 / np.sqrt(2) + EPS), 5 / (10 / np.sqrt(2) + EPS)],
                             rtol=1e-5)
  assert list(np.sign(adv)) == [-1, 1, -1, 1]


def test_group_advantages_rejects_group_size_1():
  with pytest.raises(InputError, match="group_size"):
    grpo.group_advantages(jnp.array([1.0, 2.0]), 1)


# --- shuffled-reward control --------------------------------------------------

def test_shuffle_within_groups():
  shuffle = jax.jit(controls.shuffle_within_groups, static_argnums=1)   # as the step calls it
  rewards = jnp.arange(16, dtype=jnp.float32)
  out = np.asarray(shuffle(rewards, 4, jax.random.key(0)))
  for g in range(4):
    assert sorted(out[4 * g:4 * g + 4]) == list(range(4 * g, 4 * g + 4))
  again = np.asarray(shuffle(rewards, 4, jax.random.key(0)))
  np.testing.assert_array_equal(out, again)
  others = [np.asarray(shuffle(rewards, 4, jax.random.key(k))) for k in (1, 2, 3)]
  assert any(not np.array_equal(out, o) for o in others)
  assert any(not np.array_equal(o, np.asarray(rewards)) for o in [out] + others)


# --- the GRPO loss ------------------------------------------------------------

CLIP, BETA = 0.2, 0.1
A = np.array([1.5, -0.8], np.float32)
# Ratios chosen by hand: row 0 (A > 0): inside, above (clip binds), below (clip
# does not bind: min picks rho A); row 1 (A < 0): inside, below (clip binds),
# above (min picks rho A).
RHO = np.array([[1.1, 1.5, 0.5], [0.95, 0.6, 1.4]], np.float32)
CLIP_BINDS = np.array([[False, True, False], [False, True, False]])
OLD = np.array([[-1.2, -2.0, -0.7], [-3.0, -0.4, -1.1]], np.float32)
LOGP = OLD + np.log(RHO)
REF = LOGP + np.array([[0.3, -0.5, 0.0], [1.0, -0.2, 0.4]], np.float32)


def test_grpo_token_loss_hand_computed():
  per_token, stats = grpo.grpo_token_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(REF),
                                        jnp.asarray(A), CLIP, BETA)
  a = A[:, None].astype(np.float64)
  rho = RHO.astype(np.float64)
  d = REF.astype(np.float64) - LOGP
  kl = np.exp(d) - d - 1
  expected = -np.minimum(rho * a, np.clip(rho, 1 - CLIP, 1 + CLIP) * a) + BETA * kl
  np.testing.assert_allclose(per_token, expected, rtol=1e-5, atol=1e-6)
  # the clip binds exactly where chosen: there the policy term is -clip(rho) A
  bound = np.where(RHO > 1, 1 + CLIP, 1 - CLIP) * a
  np.testing.assert_allclose(np.asarray(per_token)[CLIP_BINDS],
                             (-bound + BETA * kl)[CLIP_BINDS], rtol=1e-5)
  np.testing.assert_allclose(stats["kl"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["ratio"], RHO.mean(), rtol=1e-5)
  # ratios outside [1 - e, 1 + e]: 1.5, 0.5, 0.6, 1.4
  np.testing.assert_allclose(stats["clip_fraction"], 4 / 6, rtol=1e-6)


def test_grpo_token_loss_gradient():
  def total(logp):
    return grpo.grpo_token_loss(logp, jnp.asarray(OLD), jnp.asarray(REF), jnp.asarray(A),
                              CLIP, BETA)[0].sum()

  grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(LOGP)))
  kl_part = BETA * (1 - np.exp(REF.astype(np.float64) - LOGP))
  unclipped = -A[:, None] * RHO + kl_part
  expected = np.where(CLIP_BINDS, kl_part, unclipped)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_grpo_on_policy_ratio_is_one():
  """mu = 1: old = stop_gradient(logp), so rho = 1 and the policy-gradient part
  is -A grad logp; with beta the k3 gradient beta (1 - exp(ref - logp)) adds."""
  def total(logp, beta):
    per_token, stats = grpo.grpo_token_loss(logp, jax.lax.stop_gradient(logp), jnp.asarray(REF),
                                          jnp.asarray(A), CLIP, beta)
    return per_token.sum(), stats

  value_and_grad = jax.jit(jax.value_and_grad(total, has_aux=True))
  (value, stats), grad = value_and_grad(jnp.asarray(LOGP), 0.0)
  assert float(stats["ratio"]) == 1.0 and float(stats["clip_fraction"]) == 0.0
  np.testing.assert_allclose(value, -(A[:, None] * np.ones_like(LOGP)).sum(), rtol=1e-6)
  np.testing.assert_allclose(grad, np.broadcast_to(-A[:, None], LOGP.shape), rtol=1e-6)
  _, grad = value_and_grad(jnp.asarray(LOGP), BETA)
  np.testing.assert_allclose(grad, -A[:, None] + BETA * (1 - np.exp(REF - LOGP)),
                             rtol=1e-5, atol=1e-6)


# --- the update step on the mini model ---------------------------------------

FAST = hm.FAST


def compile_fast(jitted, *example_args):
  """A library jit (donation and all) compiled for these argument shapes."""
  return jitted.lower(*example_args).compile(compiler_options=FAST)


def to_numpy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))   # one compilation, not one a leaf


def norm(tree):
  return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))


def max_abs_diff(a, b):
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


PROMPTS = ["a photo of a circle", "a photo of two red squares"]   # 2 prompts x G = 2
STEP_BETA = 0.05


@pytest.fixture(scope="module")
def mini():
  """Full fine-tune setup: graphdef, params (the frozen reference) and a batch of
  4 rows (2 prompts x 2 samples) with advantages and reference log-probs."""
  cfg = presets.synthetic("mini")
  templates = text.Templates(text.synthetic_tokenizer(), cfg.image_tokens,
                             cfg.max_prompt_tokens)
  graphdef, params = hm.host_init(cfg, 0)
  ids, valid = templates.generation([p for p in PROMPTS for _ in range(2)])
  rng = np.random.default_rng(1)
  codes = rng.integers(0, cfg.codebook_size, (4, cfg.image_tokens)).astype(np.int32)
  batch = {"prompt_ids": ids, "prompt_valid": valid, "codes": codes,
           "advantages": np.array([0.7, -0.7, 1.2, -1.2], np.float32)}
  # Reference log-probs that differ from the policy's (~log 1/25 at this
  # init), so the KL term has a gradient.
  batch["ref_logp"] = (np.log(1 / cfg.codebook_size) + 0.3 * rng.standard_normal(
      codes.shape)).astype(np.float32)
  return graphdef, params, batch


def fresh_state(tx, params):
  trainable = copy(params)   # the state is donated; the frozen reference must survive
  return {"trainable": trainable, "opt_state": jax.jit(tx.init)(trainable),
          "step": jnp.int32(0),
          "rng": jax.random.key_data(jax.random.key(0))}


@pytest.fixture(scope="module")
def sgd_steps(mini):
  """Plain SGD (lr 1): the update is minus the gradient the step computed."""
  graphdef, params, batch = mini
  tx = optax.sgd(1.0)
  make = lambda k: compile_fast(
      grpo.make_grpo_step(graphdef, lora.Roles(False), tx, clip_eps=0.2, beta=STEP_BETA,
                        grad_accum=k), fresh_state(tx, params), params, batch)
  return tx, make(1), make(2)


def full_logprobs(model, batch):
  """Token log-probs and entropy from the whole [B, N, codebook] log-softmax at once."""
  logp_all = jax.nn.log_softmax(image_logits(model, batch["prompt_ids"], batch["prompt_valid"],
                                             batch["codes"]))
  logp = jnp.take_along_axis(logp_all, batch["codes"][..., None], -1)[..., 0]
  return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])   # 16 image tokens: divisors or not
def test_chunked_token_logprobs_equal_the_full_log_softmax(mini, chunk):
  """grpo.token_logprobs reads the image head in chunks of tokens: the same log-probs,
  entropy and gradient as the whole log-softmax."""
  graphdef, params, batch = mini
  assert batch["codes"].shape[1] == 16

  def objective(fn, p):
    logp, entropy = fn(nnx.merge(graphdef, p), batch)
    return jnp.sum(logp * batch["advantages"][:, None]) + 0.1 * jnp.sum(entropy), (logp, entropy)

  chunked = lambda model, b: grpo.token_logprobs(model, b["prompt_ids"], b["prompt_valid"],
                                               b["codes"], chunk=chunk)
  run = lambda fn: jax.jit(jax.value_and_grad(lambda p: objective(fn, p), has_aux=True),
                           compiler_options=FAST)(params)
  (_, (logp, entropy)), grads = run(chunked)
  (_, (logp_full, entropy_full)), grads_full = run(full_logprobs)
  np.testing.assert_allclose(logp, logp_full, atol=1e-5)
  np.testing.assert_allclose(entropy, entropy_full, atol=1e-5)
  assert norm(grads_full) > 0 and max_abs_diff(grads, grads_full) < 1e-5


@pytest.fixture(scope="module")
def independent_grad(mini):
  """The step's loss written out for mu = 1: mean over rows of the mean over image
  tokens of -A logp + beta k3(ref - logp) (rho = 1, so no clipping)."""
  graphdef, _, _ = mini

  def loss(p, batch, beta):
    logp, _ = full_logprobs(nnx.merge(graphdef, p), batch)
    d = batch["ref_logp"] - logp
    per_token = -batch["advantages"][:, None] * logp + beta * (jnp.exp(d) - d - 1)
    return per_token.mean()

  return jax.jit(jax.grad(loss), compiler_options=FAST)


def test_grpo_step_on_policy_gradient(mini, sgd_steps, independent_grad):
  _, params, batch = mini
  tx, step1, _ = sgd_steps
  before = to_numpy(params)
  state, m = step1(fresh_state(tx, params), params, batch)
  grads = independent_grad(params, batch, STEP_BETA)
  expected = jax.tree.map(lambda p, g: p - np.asarray(g), before, grads)
  assert max_abs_diff(state["trainable"], expected) < 1e-6
  assert max_abs_diff(state["trainable"], before) > 1e-3   # it did move
  np.testing.assert_allclose(m["grad_norm"], norm(grads), rtol=1e-5)
  assert float(m["ratio"]) == pytest.approx(1.0) and float(m["clip_fraction"]) == 0.0
  assert float(m["skipped"]) == 0.0 and int(state["step"]) == 1
  assert_trees_equal(params, before)   # the frozen reference is untouched


def test_full_ft_of_chosen_modules_trains_only_them(mini, independent_grad):
  """gvu.full_ft_modules=("lm",) (T2I-R1's choice): one SGD step moves the language
  model by exactly the full fine-tune's gradient on it; gen_* and the vision
  tower stay the reference's."""
  graphdef, params, batch = mini
  tx = optax.sgd(1.0)
  trainable = lora.full_ft_trainable(params, ("lm",))
  assert set(trainable) == {"lm"}
  state = {"trainable": trainable, "opt_state": tx.init(trainable), "step": jnp.int32(0),
           "rng": jax.random.key_data(jax.random.key(0))}
  roles = lora.Roles(False)
  step = compile_fast(grpo.make_grpo_step(graphdef, roles, tx, clip_eps=0.2, beta=STEP_BETA,
                                        grad_accum=1), state, params, batch)
  state, _ = step(state, params, batch)
  policy = roles.policy(state["trainable"], params)
  grads = independent_grad(params, batch, STEP_BETA)
  expected_lm = jax.tree.map(lambda p, g: np.asarray(p) - np.asarray(g), params["lm"], grads["lm"])
  assert max_abs_diff(policy["lm"], expected_lm) < 1e-6
  assert max_abs_diff(policy["lm"], params["lm"]) > 1e-3
  for module in set(params) - {"lm"}:
    if module.startswith("gen_"):
      assert norm(grads[module]) > 0   # they would move under full fine-tuning
    assert_trees_equal(policy[module], params[module])
  with pytest.raises(InputError, match=r"gvu.full_ft_modules: \['gen'\] not in the model"):
    lora.full_ft_trainable(params, ("lm", "gen"))


def test_grad_accumulation_matches_one_batch(mini, sgd_steps):
  _, params, batch = mini
  tx, step1, step2 = sgd_steps
  s1, m1 = step1(fresh_state(tx, params), params, batch)
  s2, m2 = step2(fresh_state(tx, params), params, batch)
  assert max_abs_diff(s1["trainable"], params) > 1e-3
  assert max_abs_diff(s1["trainable"], s2["trainable"]) < 1e-5
  np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m2["kl"], m1["kl"], rtol=1e-5)
  np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)


def test_shared_prompt_pass_gives_the_same_update(mini, sgd_steps):
  """shared_prompt_group=2 (the batch: 2 prompts x 2 rows, prompt-major) runs each
  prompt once: the same SGD update and metrics as a pass per row."""
  graphdef, params, batch = mini
  tx, step1, _ = sgd_steps
  shared = compile_fast(grpo.make_grpo_step(graphdef, lora.Roles(False), tx, clip_eps=0.2,
                                          beta=STEP_BETA, grad_accum=1, shared_prompt_group=2),
                        fresh_state(tx, params), params, batch)
  s1, m1 = step1(fresh_state(tx, params), params, batch)
  s2, m2 = shared(fresh_state(tx, params), params, batch)
  assert max_abs_diff(s1["trainable"], params) > 1e-3
  assert max_abs_diff(s1["trainable"], s2["trainable"]) < 1e-5
  for key in ("loss", "kl", "grad_norm", "entropy"):
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def adam_step(mini):
  graphdef, params, batch = mini
  tx, _ = optimizer.make_optimizer(opt_config(lr=1e-2, max_grad_norm=1.0), 10)
  step = grpo.make_grpo_step(graphdef, lora.Roles(False), tx, clip_eps=0.2, beta=0.0,
                           grad_accum=1)
  return tx, compile_fast(step, fresh_state(tx, params), params, batch)


def test_zero_advantages_leave_params_unchanged(mini, adam_step):
  _, params, batch = mini
  tx, step = adam_step
  zero = dict(batch, advantages=np.zeros(4, np.float32))
  state = fresh_state(tx, params)
  for _ in range(2):   # the second update runs at lr > 0 (after the warmup step)
    state, m = step(state, params, zero)
    assert float(m["grad_norm"]) == 0.0 and float(m["skipped"]) == 0.0
  assert_trees_equal(state["trainable"], params)


def test_nonfinite_advantages_skip_the_update(mini, adam_step):
  _, params, batch = mini
  tx, step = adam_step
  state, _ = step(fresh_state(tx, params), params, batch)   # a real first update
  state, _ = step(state, params, batch)
  assert max_abs_diff(state["trainable"], params) > 1e-4
  before = to_numpy({"trainable": state["trainable"], "opt_state": state["opt_state"]})
  bad = dict(batch, advantages=np.array([0.5, np.nan, 1.0, -1.0], np.float32))
  state, m = step(state, params, bad)
  assert float(m["skipped"]) == 1.0
  assert not np.isfinite(float(m["loss"]))
  assert_trees_equal(state["trainable"], before["trainable"])
  assert_trees_equal(state["opt_state"], before["opt_state"])
  # and a finite batch afterwards updates again
  state, m = step(state, params, batch)
  assert float(m["skipped"]) == 0.0
  assert max_abs_diff(state["trainable"], before["trainable"]) > 1e-5


def test_grad_norm_is_reported_before_clipping(mini, adam_step, independent_grad):
  _, params, batch = mini
  tx, step = adam_step
  big = dict(batch, advantages=100.0 * batch["advantages"])
  _, m = step(fresh_state(tx, params), params, big)
  expected = norm(independent_grad(params, big, 0.0))
  assert float(expected) > 10.0   # far above max_grad_norm = 1
  np.testing.assert_allclose(m["grad_norm"], expected, rtol=1e-5)


# --- LoRA roles -------------------------------------------------------------

def test_lora_reference_is_base_and_only_adapters_train(mini):
  _, _, batch = mini
  cfg = presets.synthetic("mini")
  graphdef, params = hm.host_init(cfg, 2, lora_rank=2, lora_alpha=4.0)
  base, adapters = lora.split(params)
  assert all(path[-1].key in lora.LORA_KEYS
             for path, _ in jax.tree_util.tree_leaves_with_path(adapters))
  assert not any(path[-1].key in lora.LORA_KEYS
                 for path, _ in jax.tree_util.tree_leaves_with_path(base))
  roles = lora.Roles(True)
  logp_fn = compile_fast(grpo.make_logp_fn(graphdef, roles, with_policy=True),
                         adapters, base, batch)

  out = logp_fn(adapters, base, batch)   # fresh adapters: B = 0
  np.testing.assert_array_equal(out["ref_logp"], out["old_logp"])

  tx = optax.sgd(1.0)
  base_before, adapters_before = to_numpy(base), to_numpy(adapters)
  lora_batch = dict(batch, ref_logp=out["ref_logp"])
  state = {"trainable": copy(adapters), "opt_state": tx.init(adapters), "step": jnp.int32(0),
           "rng": jax.random.key_data(jax.random.key(0))}
  step = compile_fast(
      grpo.make_grpo_step(graphdef, roles, tx, clip_eps=0.2, beta=STEP_BETA, grad_accum=1),
      state, base, lora_batch)
  state, m = step(state, base, lora_batch)
  assert float(m["skipped"]) == 0.0
  assert float(m["grad_norm"]) > 0.0
  # The trainable tree is still exactly the adapters; the base was passed
  # separately and is untouched (not donated, not modified).
  assert jax.tree.structure(state["trainable"]) == jax.tree.structure(adapters)
  assert_trees_equal(base, base_before)
  for path, new in jax.tree_util.tree_leaves_with_path(state["trainable"]):
    old = adapters_before
    for k in path:
      old = old[k.key]
    if path[-1].key == "lora_b":   # B gets the gradient first (dL/dA = 0 while B = 0)
      assert np.abs(np.asarray(new) - old).max() > 0, jax.tree_util.keystr(path)

  after = logp_fn(state["trainable"], base, batch)
  np.testing.assert_allclose(after["ref_logp"], out["ref_logp"], atol=1e-6)   # base only
  assert np.abs(np.asarray(after["old_logp"]) - np.asarray(after["ref_logp"])).max() > 1e-4
