"""Tests for the Janus-family model: shapes, masking, padding, LoRA, RoPE/RMSNorm,
the KV-cached decode path and the cell tokenizer (mini preset, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers_model as hm
from gvu_jax import world
from gvu_jax.infra import pixels as pixels_lib
from gvu_jax.models import build, layers, llama, lora, presets, umm
from gvu_jax.rl import grpo
from gvu_jax.world import codebook


@pytest.fixture(scope="module")
def base():
  return hm.mini()


@pytest.fixture(scope="module")
def adapted():
  return hm.mini_lora()


def shape_tree(params):
  return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)


# --- Parameter shapes ------------------------------------------------------------


def check_preset_shapes(cfg, params):
  """The Janus layout at the preset's sizes (see docs/design.md §8)."""
  h, v = cfg.lm.hidden, cfg.lm.vocab_size
  hd = h // cfg.lm.heads
  inter, width, p = cfg.lm.intermediate, cfg.vision.width, cfg.vision.patch_size
  lm = params["lm"]
  assert lm["embed"]["embedding"].shape == (v, h)
  assert sorted(lm["layers"]) == list(range(cfg.lm.layers))
  layer = lm["layers"][cfg.lm.layers - 1]
  assert layer["attn"]["q"]["kernel"].shape == (h, cfg.lm.heads * hd)
  assert layer["attn"]["k"]["kernel"].shape == (h, cfg.lm.kv_heads * hd)
  assert layer["attn"]["v"]["kernel"].shape == (h, cfg.lm.kv_heads * hd)
  assert layer["attn"]["o"]["kernel"].shape == (cfg.lm.heads * hd, h)
  assert layer["mlp"]["gate"]["kernel"].shape == (h, inter)
  assert layer["mlp"]["up"]["kernel"].shape == (h, inter)
  assert layer["mlp"]["down"]["kernel"].shape == (inter, h)
  assert layer["input_norm"]["scale"].shape == (h,)
  assert "bias" not in layer["attn"]["q"] and "bias" not in layer["mlp"]["down"]
  assert lm["lm_head"]["kernel"].shape == (h, v)
  vis = params["vision"]
  assert vis["patch_embed"]["kernel"].shape == (p * p * 3, width)
  assert vis["pos_embed"].shape == ((cfg.vision.image_size // p) ** 2, width)
  assert len(vis["blocks"]) == cfg.vision.layers
  assert vis["blocks"][0]["qkv"]["kernel"].shape == (width, 3 * width)
  assert vis["blocks"][0]["qkv"]["bias"].shape == (3 * width,)
  assert params["aligner"]["fc1"]["kernel"].shape == (width, h)
  assert params["aligner"]["fc2"]["kernel"].shape == (h, h)
  assert params["gen_embed"]["embedding"].shape == (cfg.codebook_size, 8)
  assert params["gen_aligner"]["fc1"]["kernel"].shape == (8, h)
  assert params["gen_aligner"]["fc2"]["kernel"].shape == (h, h)
  assert params["gen_head"]["fc1"]["kernel"].shape == (h, h)
  assert params["gen_head"]["fc2"]["kernel"].shape == (h, cfg.codebook_size)
  assert params["gen_head"]["fc2"]["bias"].shape == (cfg.codebook_size,)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_preset_sizes():
  mini, tiny = presets.synthetic("mini"), presets.synthetic("tiny")
  assert (mini.lm.hidden, mini.lm.layers, mini.lm.heads, mini.vision.width) == (32, 2, 2, 32)
  assert (tiny.lm.hidden, tiny.lm.layers, tiny.lm.heads, tiny.vision.width) == (128, 4, 4, 64)
  assert presets.synthetic().lm.hidden == 128   # "tiny" is the default
  for cfg in (mini, tiny):
    # Multi-head attention and a 3x MLP; one image token per 8x8 cell.
    assert cfg.lm.kv_heads == cfg.lm.heads and cfg.lm.intermediate == 3 * cfg.lm.hidden
    assert cfg.codebook_size == world.CODEBOOK_SIZE == 25
    assert cfg.image_tokens == world.NUM_CELLS == (cfg.vision.image_size // 8) ** 2
    assert cfg.vision.patch_size == world.CELL == 8


def test_mini_param_shapes(base):
  _, params = base
  check_preset_shapes(presets.synthetic("mini"), params)
  assert params["lm"]["embed"]["embedding"].shape == (42, 32)
  assert params["lm"]["layers"][0]["attn"]["k"]["kernel"].shape == (32, 32)
  assert params["gen_head"]["fc2"]["kernel"].shape == (32, 25)


def test_tiny_param_shapes_abstract():
  _, params = build.abstract(presets.synthetic("tiny"))
  check_preset_shapes(presets.synthetic("tiny"), params)
  assert params["lm"]["layers"][0]["mlp"]["down"]["kernel"].shape == (384, 128)


def test_abstract_matches_create_without_allocating(base, adapted):
  for (_, params), lm_overrides in ((base, {}), (adapted, hm.LORA)):
    before = {id(x) for x in jax.live_arrays()}
    _, abstract = build.abstract(presets.synthetic("mini"), **lm_overrides)
    assert not {id(x) for x in jax.live_arrays()} - before
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert shape_tree(abstract) == shape_tree(params)


def test_create_is_seeded(base):
  _, params = base
  _, again = build.create(presets.synthetic("mini"), 0)
  jax.tree.map(np.testing.assert_array_equal, params, again)
  _, other = build.create(presets.synthetic("mini"), 2)
  assert not np.allclose(params["lm"]["embed"]["embedding"], other["lm"]["embed"]["embedding"])


# --- Image logits: padding and causality ------------------------------------------


def test_left_padding_invariance(base):
  graphdef, params = base
  seqs = [hm.prompt_seq(t) for t in hm.prompt_texts()]
  short = seqs[0]
  assert len(short) < len(seqs[1]) == hm.PROMPT_LEN
  codes = hm.random_codes(0, 4)
  ids, valid = hm.left_pad(seqs, hm.PROMPT_LEN)
  batched = hm.image_logits(graphdef, params, ids, valid, codes)
  alone_ids, alone_valid = hm.left_pad([short], len(short))
  assert alone_valid.all()
  alone = hm.image_logits(graphdef, params, alone_ids, alone_valid, codes[:1])
  assert batched.shape == (4, world.NUM_CELLS, world.CODEBOOK_SIZE)
  np.testing.assert_allclose(batched[0], alone[0], atol=1e-5, rtol=0)
  # The pad token's id does not matter either (it is masked, not just zero).
  ids_junk = np.where(valid, ids, 17)
  junk = hm.image_logits(graphdef, params, ids_junk, valid, codes)
  np.testing.assert_allclose(junk, batched, atol=1e-5, rtol=0)
  # And the prompt matters: a different prompt gives different logits.
  other = hm.image_logits(graphdef, params, ids[::-1], valid[::-1], codes)
  assert np.abs(other[0] - batched[0]).max() > 1e-3


def test_templates_match_hand_built_prompts():
  ids, valid = hm.prompts()
  want_ids, want_valid = hm.left_pad([hm.prompt_seq(t) for t in hm.prompt_texts()],
                                     hm.PROMPT_LEN)
  assert len(set(valid.sum(1))) == 4
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(valid, want_valid)


@pytest.mark.parametrize("j", [0, 7, world.NUM_CELLS - 2])
def test_image_logits_causal(base, j):
  graphdef, params = base
  ids, valid = hm.prompts()
  codes = hm.random_codes(1, 4)
  changed = codes.copy()
  changed[:, j] = (codes[:, j] + 1 + np.arange(4)) % world.CODEBOOK_SIZE
  a = hm.image_logits(graphdef, params, ids, valid, codes)
  b = hm.image_logits(graphdef, params, ids, valid, changed)
  # Logit i predicts code i from codes < i: positions <= j cannot see code j.
  np.testing.assert_array_equal(a[:, :j + 1], b[:, :j + 1])
  assert np.abs(a[:, j + 1] - b[:, j + 1]).max() > 1e-4


def test_last_code_is_not_an_input(base):
  graphdef, params = base
  ids, valid = hm.prompts()
  codes = hm.random_codes(2, 4)
  changed = codes.copy()
  changed[:, -1] = (codes[:, -1] + 3) % world.CODEBOOK_SIZE
  np.testing.assert_array_equal(hm.image_logits(graphdef, params, ids, valid, codes),
                                hm.image_logits(graphdef, params, ids, valid, changed))


# --- Text logits with an image --------------------------------------------------


@pytest.fixture(scope="module")
def understand(base):
  """Jitted text_logits plus its pieces, for [2, T] understanding batches."""
  graphdef, params = base

  @jax.jit
  def run(params, ids, valid, slots, pixels):
    model = nnx.merge(graphdef, params)
    return dict(logits=umm.text_logits(model, ids, valid, slots, pixels),
                inputs=model.embed_query(ids, slots, pixels),
                feats=model.aligner(model.vision(pixels)),
                text=model.lm.embed_tokens(ids))

  return lambda *args: jax.tree.map(np.asarray, run(params, *args))


def understanding_batch():
  batch = hm.templates().understanding(hm.prompt_texts()[:2])
  tok = codebook.CellTokenizer()
  pixels = np.asarray(tok.decode(hm.random_codes(3, 2)))
  other = np.asarray(tok.decode(hm.random_codes(4, 2)))
  return batch, pixels, other


def test_text_logits_read_the_image(base, understand):
  _, params = base
  batch, pixels, other = understanding_batch()
  args = (batch.ids, batch.valid, batch.image_slots)
  a = understand(*args, pixels)["logits"]
  assert a.shape == batch.ids.shape + (params["lm"]["lm_head"]["kernel"].shape[1],)
  assert a.dtype == np.float32
  np.testing.assert_array_equal(a, understand(*args, pixels)["logits"])
  b = understand(*args, other)["logits"]
  first_slot = int(np.argmax(batch.image_slots[0]))
  assert batch.image_slots[:, first_slot].all() and not batch.image_slots[:, :first_slot].any()
  # Tokens before the image cannot see it; the answer positions do.
  np.testing.assert_array_equal(a[:, :first_slot], b[:, :first_slot])
  start = batch.answer_start
  answer = slice(start - 1, start - 1 + batch.answer_len)
  assert np.abs(a[:, answer] - b[:, answer]).max(axis=(1, 2)).min() > 1e-3
  # Identical rows give identical outputs; only the image differs between rows.
  same = understand(batch.ids[[1, 1]], batch.valid[[1, 1]], batch.image_slots[[1, 1]],
                    pixels[[0, 1]])["logits"]
  np.testing.assert_allclose(same[1], a[1], atol=1e-5, rtol=0)
  assert np.abs(same[0, answer] - same[1, answer]).max() > 1e-3


def test_image_features_fill_slots_in_order(understand):
  batch, pixels, _ = understanding_batch()
  out = understand(batch.ids, batch.valid, batch.image_slots, pixels)
  for b in range(2):
    slots = batch.image_slots[b]
    assert slots.sum() == out["feats"].shape[1] == world.NUM_CELLS
    np.testing.assert_allclose(out["inputs"][b, slots], out["feats"][b], atol=1e-6)
    np.testing.assert_array_equal(out["inputs"][b, ~slots], out["text"][b, ~slots])
  assert np.abs(out["feats"][0] - out["feats"][1]).max() > 1e-3


# --- LoRA ------------------------------------------------------------------------


def lora_logits(adapted, params):
  graphdef, _ = adapted
  ids, valid = hm.prompts()
  return hm.image_logits(graphdef, params, ids, valid, hm.random_codes(6, 4))


def randomize_b(adapters, seed=0):
  leaves, treedef = jax.tree.flatten_with_path(adapters)
  rng = np.random.default_rng(seed)
  new = [np.asarray(rng.normal(0, 0.5, x.shape), np.float32)
         if path[-1].key == "lora_b" else x for path, x in leaves]
  return jax.tree.unflatten(treedef, new)


def test_lora_split_keeps_only_adapters(adapted):
  _, params = adapted
  base_part, adapters = lora.split(params)
  paths = [tuple(k.key for k in path) for path, _ in jax.tree.flatten_with_path(adapters)[0]]
  assert sorted(paths) == sorted(
      ("lm", "layers", i, "attn", t, w)
      for i in range(2) for t in ("q", "v") for w in ("lora_a", "lora_b"))
  base_paths = [tuple(k.key for k in path)
                for path, _ in jax.tree.flatten_with_path(base_part)[0]]
  assert not any(p[-1] in lora.LORA_KEYS for p in base_paths)
  assert len(base_paths) + len(paths) == len(jax.tree.leaves(params))
  assert shape_tree(base_part) == shape_tree(hm.mini()[1])
  for path, b in jax.tree.flatten_with_path(adapters)[0]:
    if path[-1].key == "lora_b":
      assert b.shape == (4, 32) and not np.asarray(b).any()   # B starts at zero
    else:
      assert b.shape == (32, 4) and np.asarray(b).std() > 0.05
  merged = lora.merge(base_part, adapters)
  assert shape_tree(merged) == shape_tree(params)
  jax.tree.map(np.testing.assert_array_equal, merged, params)


def test_lora_a_starts_as_peft():
  """A ~ kaiming-uniform(a=sqrt 5) on torch's [r, din] weight, as PEFT's
  reset_lora_parameters draws it: U(-1/sqrt(din), 1/sqrt(din)); B = 0."""
  import math

  import torch
  din, rank = 768, 16
  layer = layers.Dense(din, 64, lora_rank=rank, lora_alpha=32.0, rngs=nnx.Rngs(0))
  a = np.asarray(layer.lora_a[...]).ravel()
  peft = torch.empty(rank, din)
  torch.nn.init.kaiming_uniform_(peft, a=math.sqrt(5))
  peft = peft.numpy().ravel()
  bound = 1.0 / math.sqrt(din)
  for sample in (a, peft):   # the same support and spread as PEFT's draw
    assert np.abs(sample).max() <= bound and np.abs(sample).max() > 0.99 * bound
    np.testing.assert_allclose(sample.std(), bound / math.sqrt(3.0), rtol=0.03)
    assert abs(sample.mean()) < 0.03 * bound
  # Same distribution: the quantiles of the two samples agree.
  qs = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(np.quantile(a, qs), np.quantile(peft, qs), atol=0.03 * bound)
  assert not np.asarray(layer.lora_b[...]).any()


def test_fresh_lora_is_the_base_model(base, adapted):
  graphdef, base_params = base
  _, adapters = lora.split(adapted[1])
  want = lora_logits(base, base_params)
  got = lora_logits(adapted, lora.merge(base_params, adapters))
  np.testing.assert_array_equal(got, want)


def test_lora_adapters_change_the_model(base, adapted):
  _, base_params = base
  _, adapters = lora.split(adapted[1])
  trained = randomize_b(adapters)
  want = lora_logits(base, base_params)
  got = lora_logits(adapted, lora.merge(base_params, trained))
  assert np.abs(got - want).max() > 1e-2


def test_lora_delta_is_scaled_a_times_b(adapted):
  graphdef, params = adapted
  base_part, adapters = lora.split(params)
  trained = lora.merge(base_part, randomize_b(adapters))
  model = nnx.merge(graphdef, trained)
  q = model.lm.layers[0].attn.q
  x = np.random.default_rng(7).normal(size=(3, 32)).astype(np.float32)
  layer = trained["lm"]["layers"][0]["attn"]["q"]
  want = x @ layer["kernel"] + (8.0 / 4) * (x @ layer["lora_a"]) @ layer["lora_b"]
  np.testing.assert_allclose(np.asarray(q(x)), want, atol=1e-4, rtol=1e-5)


def test_lora_roles(base, adapted):
  _, base_params = base
  _, adapters = lora.split(adapted[1])
  trained = randomize_b(adapters)
  roles = lora.Roles(True)
  want_ref = lora_logits(base, base_params)
  np.testing.assert_array_equal(lora_logits(adapted, roles.reference(trained, base_params)),
                                want_ref)
  np.testing.assert_array_equal(lora_logits(adapted, roles.policy(trained, base_params)),
                                lora_logits(adapted, lora.merge(base_params, trained)))
  full = lora.Roles(False)   # the policy: the frozen weights with the trained ones in place
  zeros = jax.tree.map(np.zeros_like, base_params)
  every = full.policy(base_params, zeros)
  assert all(a is b for a, b in zip(jax.tree.leaves(every), jax.tree.leaves(base_params)))
  only_lm = full.policy({"lm": base_params["lm"]}, zeros)
  assert only_lm["lm"] is not zeros["lm"] and only_lm["gen_head"] is zeros["gen_head"]
  assert all(a is b for a, b in zip(jax.tree.leaves(only_lm["lm"]),
                                    jax.tree.leaves(base_params["lm"])))
  assert full.reference(None, base_params) is base_params


# --- RMSNorm and RoPE ------------------------------------------------------------


def test_rms_norm():
  norm = llama.RMSNorm(6, 1e-6)
  scale = np.linspace(0.5, 2.0, 6).astype(np.float32)
  norm.scale[...] = jnp.asarray(scale)
  x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32) * 3
  want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(np.asarray(norm(x)), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(norm(10 * x)), want, rtol=1e-5, atol=1e-6)
  # bf16 in -> computed in fp32 -> bf16 out.
  y = norm(jnp.asarray(x, jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=2e-2)
  # eps keeps a zero vector finite.
  assert np.all(np.asarray(norm(np.zeros((1, 6), np.float32))) == 0)


def rope_inputs(seed, t=5, heads=2, d=8):
  return np.random.default_rng(seed).normal(size=(1, t, heads, d)).astype(np.float32)


def test_rope_position_zero_is_identity():
  x = rope_inputs(0)
  out = llama.rope(x, np.zeros((1, 5), np.int32), 1e4)
  np.testing.assert_array_equal(np.asarray(out), x)


def test_rope_preserves_norms_and_dtype():
  x = rope_inputs(1)
  pos = np.array([[0, 3, 17, 100, 4000]])
  out = np.asarray(llama.rope(x, pos, 1e4))
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  assert not np.allclose(out[:, 1:], x[:, 1:])
  assert llama.rope(jnp.asarray(x, jnp.bfloat16), pos, 1e4).dtype == jnp.bfloat16


def test_rope_rotate_half_layout():
  """Pairs (i, i + D/2) rotate by angle p * theta^(-i / (D/2)) (LLaMA rotate-half)."""
  d, half, p, theta = 8, 4, 3, 1e4
  for i in (0, half - 1):
    x = np.zeros((1, 1, 1, d), np.float32)
    x[..., i] = 1.0
    out = np.asarray(llama.rope(x, np.array([[p]]), theta))[0, 0, 0]
    angle = p * theta ** (-i / half)
    want = np.zeros(d)
    want[i], want[i + half] = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_rope_depends_only_on_relative_position():
  q, k = rope_inputs(2, t=1), rope_inputs(3, t=1)

  def score(m, n):
    rq = np.asarray(llama.rope(q, np.array([[m]]), 1e4))
    rk = np.asarray(llama.rope(k, np.array([[n]]), 1e4))
    return np.einsum("bthd,bthd->h", rq, rk)

  for m, n in ((5, 2), (2, 5), (9, 9)):
    for shift in (1, 13, 250):
      np.testing.assert_allclose(score(m + shift, n + shift), score(m, n), atol=1e-4)
  assert np.abs(score(5, 2) - score(2, 5)).max() > 1e-3


# --- KV-cached decode ------------------------------------------------------------


def cached_image_logits(model, ids, valid, codes, cache):
  """Prefill the prompt, then feed the codes one at a time (as rl/sampling.py does).
  Returns (logits [B, N, codebook], prefill hidden states [B, P, hidden])."""
  (b, p), n = ids.shape, codes.shape[1]
  slots_valid = jnp.concatenate([valid, jnp.zeros((b, n - 1), bool)], 1)
  prefill, cache = model.lm(model.lm.embed_tokens(ids), umm.positions_from_valid(valid),
                            umm.causal_mask(slots_valid)[:, :p], cache, 0)
  logits = jnp.zeros((b, n, model.cfg.codebook_size), jnp.float32)
  logits = logits.at[:, 0].set(model.image_head(prefill[:, -1]))
  lengths, slot = valid.sum(1), jnp.arange(p + n - 1)

  def step(i, carry):
    logits, cache = carry
    code = jax.lax.dynamic_slice_in_dim(codes, i - 1, 1, axis=1)
    mask = slots_valid | ((slot >= p) & (slot < p + i))
    hidden, cache = model.lm(model.embed_image_codes(code), (lengths + i - 1)[:, None],
                             mask[:, None], cache, p + i - 1)
    return logits.at[:, i].set(model.image_head(hidden[:, 0])), cache

  logits, _ = jax.lax.fori_loop(1, n, step, (logits, cache))
  return logits, prefill


def test_kv_cache_decode_matches_teacher_forcing(base):
  graphdef, params = base
  ids, valid = hm.prompts()
  codes = hm.random_codes(8, len(ids))

  @jax.jit
  def run(params, ids, valid, codes):
    model = nnx.merge(graphdef, params)
    # Garbage in the unwritten cache slots must be masked out, not read.
    cache = jax.tree.map(lambda c: c + 1e3,
                         model.lm.init_cache(ids.shape[0], ids.shape[1] + codes.shape[1] - 1))
    logits, prefill = cached_image_logits(model, ids, valid, codes, cache)
    full, _ = model.lm(model.lm.embed_tokens(ids), umm.positions_from_valid(valid),
                       umm.causal_mask(valid))
    return logits, prefill, full

  logits, prefill, full = run(params, ids, valid, codes)
  want = hm.image_logits(graphdef, params, ids, valid, codes)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(prefill)[valid], np.asarray(full)[valid],
                             atol=1e-4, rtol=0)


# --- Cell tokenizer --------------------------------------------------------------


def test_cell_tokenizer_round_trip():
  tok = build.image_tokenizer(presets.synthetic("mini"))
  assert (tok.num_tokens, tok.codebook_size, tok.image_size) == (16, 25, 32)
  codes = hm.random_codes(9, 8)
  codes[0] = np.arange(16)            # every code appears
  codes[1, :9] = np.arange(16, 25)
  pixels = tok.decode(codes)
  assert pixels.shape == (8, 32, 32, 3) and pixels.dtype == jnp.float32
  assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(tok.encode(pixels)), codes)
  np.testing.assert_array_equal(np.asarray(tok.decode(tok.encode(pixels))), np.asarray(pixels))
  np.testing.assert_array_equal(np.asarray(pixels_lib.to_uint8(pixels)),
                                world.codes_to_image(codes))
  noisy = pixels + np.random.default_rng(0).normal(0, 0.1, pixels.shape).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(tok.encode(noisy)), codes)


def test_cell_tokenizer_reads_world_images():
  codes = hm.random_codes(11, 8)
  images = world.codes_to_image(codes)
  pixels = images.astype(np.float32) / 127.5 - 1.0
  tok = codebook.CellTokenizer()
  np.testing.assert_array_equal(np.asarray(tok.encode(pixels)), world.image_to_codes(images))
  np.testing.assert_array_equal(np.asarray(tok.encode(pixels)), codes)
  assert pixels_lib.to_uint8(jnp.array([-1.5, -1.0, 0.0, 1.0, 2.0])).tolist() == \
      [0, 0, 128, 255, 255]


def test_remat_and_bf16_compute(base):
  """Remat and MLP token slices change memory, not math: same loss and gradients
  (slices that divide the sequence or not, with or without remat). bf16 compute
  keeps fp32 weights and stays close to the fp32 result."""
  graphdef, params = base
  ids, valid = hm.prompts(2)
  codes = hm.random_codes(5, 2)
  variants = {}
  sliced = {"mlp_slices_2": {"mlp_chunks": 2},   # the sequence: prompt + 15 image slots
            "mlp_slices_7_remat": {"mlp_chunks": 7, "remat": True}}
  for name, overrides in {"fp32": {}, "remat": {"remat": True}, **sliced,
                          "bf16": {"dtype": "bfloat16"}}.items():
    cfg = hm.mini_cfg()
    cfg.update(overrides)
    g, _ = build.abstract(cfg)
    loss = lambda p, g=g: jnp.mean(
        jax.nn.log_softmax(umm.image_logits(nnx.merge(g, p), ids, valid, codes)))
    variants[name] = jax.jit(jax.value_and_grad(loss))(params)
  (l32, g32), (lr, gr), (l16, g16) = variants["fp32"], variants["remat"], variants["bf16"]
  np.testing.assert_allclose(lr, l32, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gr, g32)
  for name in sliced:
    ls, gs = variants[name]
    np.testing.assert_allclose(ls, l32, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gs, g32)
  assert abs(float(l16) - float(l32)) < 0.05 * abs(float(l32))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))


def _tiny_xomni():
  """An X-Omni-family decoder (grouped-query heads, multimodal-only first and last
  layers) at test size."""
  return presets.xomni_config(
      lm=dict(vocab_size=96, hidden=32, layers=4, heads=4, kv_heads=2, intermediate=48,
              rope_theta=10000.0, norm_eps=1e-6, max_position=64),
      mm_vocab_size=40, image_vocab_size=32, num_mm_adap_layers=1, num_mm_head_layers=1,
      image_grid=(2, 3), dtype="float32")


def _janus_mini(**overrides):
  cfg = hm.mini_cfg()
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("model_cfg,group_size", [   # (plain Janus, G=2: test_rl.py)
    (_janus_mini(remat=True, mlp_chunks=3), 2),
    (_tiny_xomni(), 3),
], ids=["janus_remat_mlp_slices_g2", "xomni_g3"])
def test_a_prompt_shared_by_its_group_gives_the_same_logprobs_and_gradient(model_cfg,
                                                                          group_size):
  """umm.image_hidden with group_size=G runs each prompt once for its G rows: the
  same token log-probs, entropy and LoRA and base gradients as a pass per row,
  with prompts of different lengths (left padding)."""
  graphdef, params = hm.host_init(model_cfg, 3, **hm.LORA)
  rng = np.random.default_rng(4)
  params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
                        params)   # LoRA B away from zero: the adapters count
  prompt_len, prompts = 7, 3
  seqs = [rng.integers(3, model_cfg.lm.vocab_size, n) for n in (7, 2, 5)]
  ids, valid = (np.repeat(a, group_size, 0) for a in hm.left_pad(seqs, prompt_len))
  codes = rng.integers(0, 32 if model_cfg.family == "xomni" else world.CODEBOOK_SIZE,
                       (prompts * group_size, model_cfg.image_tokens)).astype(np.int32)
  weights = rng.standard_normal(codes.shape).astype(np.float32)

  def run(group):
    def objective(p):
      logp, entropy = grpo.token_logprobs(nnx.merge(graphdef, p), ids, valid, codes,
                                        group_size=group)
      return jnp.sum(weights * logp) + 0.1 * jnp.sum(entropy), (logp, entropy)
    return jax.jit(jax.value_and_grad(objective, has_aux=True),
                   compiler_options=hm.FAST)(params)

  (_, (logp, entropy)), grads = run(group_size)
  (_, (logp_1, entropy_1)), grads_1 = run(1)
  np.testing.assert_allclose(logp, logp_1, atol=1e-5)
  np.testing.assert_allclose(entropy, entropy_1, atol=1e-5)
  decoder = [g for path, g in jax.tree_util.tree_leaves_with_path(grads_1)
             if "layers" in jax.tree_util.keystr(path)]
  assert decoder and all(float(jnp.abs(g).max()) > 0 for g in decoder)   # LoRA's too
  # float32 sums in another order, to scale (1.2e-5 of it on an AVX-512 Xeon)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_1)):
    assert float(jnp.abs(a - b).max()) <= 3e-5 * float(jnp.abs(b).max()) + 1e-7
