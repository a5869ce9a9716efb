"""Benchmarks at real shapes: the sampler, VQ decode, the reward and the GRPO
update, with XLA's cost and memory analysis, beside transformers when installed.

  python -m gvu_jax.main --config=configs/janus_pro_1b.py:small --config.mode=bench \
      --workdir=/tmp/bench                      # CPU-sized (78 M parameters)
  python -m gvu_jax.main --config=configs/janus_pro_1b.py:t2i_r1 --config.mode=bench \
      --config.random_init=True --config.model_options.attention=auto --workdir=DIR
  python -m gvu_jax.main --config=configs/janus_pro_7b.py:lora --config.mode=bench \
      --config.random_init=True --config.gvu.group_size=8 \
      --config.bench.analysis_only=True --workdir=DIR   # compile only: does it fit?
  XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m gvu_jax.main \
      --config=configs/janus_pro_7b.py:lora --config.mode=bench --config.random_init=True \
      --config.bench.analysis_only=True --config.mesh.fsdp=32 --config.mesh.tensor=2 \
      --config.bench.machine=v5e --workdir=DIR     # a v5e-64 on paper (docs/scaling.md)

Weights are random (`random_init=True`, the shapes of `expect_model`) or a
converted checkpoint (`checkpoint=DIR`). Prints a table, writes WORKDIR/bench.json.

  sampler    ms per image-token step and images/s for B prompts with CFG (2B rows),
             prefill included. roofline = (bytes each step must move: the weights
             in the compute dtype + the KV cache of the tokens so far) / (measured
             copy bandwidth) / (measured step time).
  vq_decode  seconds to decode `vq_images` images.
  reward     the intrinsic reward (vision encoder + ONE decoder pass), against one
             plain decoder pass of the same length and against the reference
             algorithm: one pass per answer token, one image at a time (timed on
             `reference_forwards` of the images x tokens passes, scaled to all).
  grpo       one update of the recipe's GvU step (gvu block: LoRA or full, G, remat).
             MFU = analytic model FLOPs / time / device peak; model FLOPs count
             the matmuls and attention of the forward pass (QK and PV over the full
             square) times 3 for full fine-tuning (forward + two backward matmuls)
             or 2 for LoRA (the base weights get no gradient). XLA's own count
             (`hlo_tflop`, remat recompute included) is reported beside it.
  memory     peak bytes of each compiled function (`memory_analysis()`: arguments +
             outputs + temporaries - donated), and an analytic model for the sampler
             (weights + full KV cache) and the GRPO step (`grpo_bytes_model`). XLA's
             CPU backend does not reuse per-layer temporaries the way the GPU and TPU
             schedulers do, so on CPU its figure for a training step is far above
             what an accelerator needs; use the model there.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvu_jax import files, lora, optimizer, rl, sharding, topology
from gvu_jax import reward as reward_lib
from gvu_jax.errors import InputError
from gvu_jax.models import attention as attention_lib
from gvu_jax.models import build, presets
from gvu_jax.models.umm import causal_mask, positions_from_valid
from gvu_jax.sampling import Sampler, SamplingConfig, in_compute_dtype

# Dense bf16 peak TFLOP/s of GPUs by device kind (vendor specs; TPUs: topology.CHIPS);
# other devices use the matmul throughput measured here.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# --- The model ---------------------------------------------------------------------

def model_block(config):
  """The `model` block: the checkpoint's, the preset `expect_model` (random_init, or
  a compile-only bench: shapes are all it needs), or the embedded world's own (its
  programs are compiled, not timed)."""
  if "checkpoint" not in config:
    if not compile_only(config):
      raise InputError("mode=bench on the embedded world compiles only: set "
                       "--config.bench.analysis_only=True or --config.bench.topology=SLICE "
                       "(timing runs on a Janus recipe, configs/janus_pro_*.py)")
    return config.model.copy_and_resolve_references()
  if config.checkpoint:
    from gvu_jax import convert
    m = convert.read_converted_config(config.checkpoint)
  elif config.get("random_init") or compile_only(config):   # compiling needs shapes only
    m = presets.preset(config.expect_model)
  else:
    raise InputError("mode=bench needs weights: --config.random_init=True (random weights "
                     "of expect_model's shapes) or --config.checkpoint=DIR")
  if m.family != "janus":
    raise InputError(f"mode=bench times Janus models; {m.family} is not benchmarked yet")
  m.update(dict(config.model_options))
  return m


def compile_only(config):
  return bool(config.bench.analysis_only or config.bench.get("topology"))


def base_params(config, m, abstract):
  """The frozen base weights, as a run holds them: a checkpoint in its stored dtype,
  random weights in the compute dtype (as `convert --dtype` stores them)."""
  dtype = jnp.dtype(m.dtype)
  if config.get("checkpoint"):
    from gvu_jax import convert
    if abstract:   # shapes and the stored dtype; no weight is read
      dtype = convert.DTYPES[convert.stored_dtype(config.checkpoint)]
    else:
      return jax.tree.map(jnp.asarray, convert.load(config.checkpoint, like_model=m)[1])
  if abstract:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), build.abstract(m)[1])
  return jax.jit(lambda: jax.tree.map(lambda x: x.astype(dtype),
                                      build.create(m, config.seed)[1]))()


def count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def nbytes(tree):
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def decoder_matmul_params(m):
  """Weights every decoder token multiplies with (the layers' projections)."""
  lm = m.lm
  head_dim = lm.hidden // lm.heads
  attn = lm.hidden * head_dim * (2 * lm.heads + 2 * lm.kv_heads)
  return lm.layers * (attn + 3 * lm.hidden * lm.intermediate)


def gen_head_params(m):
  hidden = m.image_token_embed or m.lm.hidden
  return m.lm.hidden * hidden + hidden * m.codebook_size


def sampler_step_bytes(m, cache_rows, prompt_tokens):
  """-> (weight bytes, KV-cache bytes at the mean context, full KV-cache bytes) that
  a decode step over `cache_rows` rows reads, in the compute dtype."""
  itemsize = jnp.dtype(m.dtype).itemsize
  weights = (decoder_matmul_params(m) + gen_head_params(m)) * itemsize
  per_token = 2 * m.lm.layers * cache_rows * m.lm.kv_heads * (m.lm.hidden // m.lm.heads) * itemsize
  return (weights, per_token * (prompt_tokens + m.image_tokens / 2),
          per_token * (prompt_tokens + m.image_tokens - 1))


def forward_flops(m, rows, length, head_tokens):
  """Matmul FLOPs of one decoder pass: projections, attention (QK and PV over the
  full square) and the image head on `head_tokens` positions."""
  linear = decoder_matmul_params(m) * length + gen_head_params(m) * head_tokens
  attention = 2 * m.lm.layers * length * length * m.lm.hidden
  return 2 * rows * (linear + attention)


def update_forward_flops(m, rows, prompt_tokens, group):
  """forward_flops of the update's teacher-forced pass over `rows` rows; with a
  shared prompt pass (group G > 1) the prompt's tokens run once per G rows."""
  length = prompt_tokens + m.image_tokens - 1
  flops = forward_flops(m, rows, length, m.image_tokens)
  if group > 1:
    flops -= forward_flops(m, rows - rows // group, prompt_tokens, 0)
  return flops


def grpo_bytes_model(m, rows, length, trainable, frozen_bytes, flash, layout):
  """Analytic bytes one device holds in one GRPO step (per micro-batch of `rows`):
  the frozen weights, the trainable fp32 weights with their gradient and two Adam
  moments (all split over fsdp x tensor), then, split over the batch devices, the
  saved activations (each layer's input under remat, about 10 tensors of the layer
  otherwise), one layer's forward+backward working set (its MLP part for one of
  `mlp_chunks` token slices), its attention scores (none with a flash kernel) and
  one chunk of the image-head logits (logits, log-softmax and their gradient in
  float32 for rl.LOGIT_CHUNK tokens: rl.token_logprobs)."""
  lm, item = m.lm, jnp.dtype(m.dtype).itemsize
  tokens = rows * length
  per_layer_saved = tokens * lm.hidden * item * (1 if m.remat else 10)
  working = tokens * (3 * lm.intermediate / m.get("mlp_chunks", 1) + 6 * lm.hidden) * item * 2
  scores = 0 if flash else 2 * rows * lm.heads * length * length * 4
  logits = 3 * rows * min(rl.LOGIT_CHUNK, m.image_tokens) * m.codebook_size * 4
  weight_shards, row_shards = shards(layout)
  return int((frozen_bytes + 16 * trainable) / weight_shards
             + (lm.layers * per_layer_saved + working + scores + logits) / row_shards)


def shards(layout, rollout=False):
  """(ways the weights are split, ways the rows are split) on the layout's mesh; the
  rollout's weights are split over tensor only (sharding.Layout.for_rollout)."""
  mesh = layout.mesh.shape
  weights = mesh["tensor"] if rollout and layout.rollout_gathered else mesh["fsdp"] * mesh["tensor"]
  return weights, layout.batch_devices


# --- Measuring ---------------------------------------------------------------------

def seconds(fn, repeats):
  """Fastest of `repeats` timed calls after one untimed warm-up, and the last
  call's output. The functions timed here are compiled ahead of time (for their
  analysis), so the warm-up compiles nothing."""
  out = jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    tic = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - tic)
  return best, out


def compiled_figures(compile_fn, abstract):
  """-> (the executable or None, its figures per device: topology.compile_program's
  and XLA's FLOPs in TFLOP as the tables print them). A program the compiler refuses
  for memory is a result when nothing is to run (abstract), an error otherwise."""
  compiled, out = topology.compile_program(compile_fn)
  if compiled is None and not abstract:
    raise InputError(f"mode=bench: the compiler refused a program: {out['error']}")
  out["hlo_tflop"] = out["flops"] / 1e12 if out.get("flops") else None
  return compiled, out


def copy_bandwidth_GBps(dtype):
  """Read + write bytes per second of y = 2x over a large array."""
  n = (1 << 26) if jax.default_backend() == "cpu" else (1 << 30)
  x = jnp.ones((n,), dtype)
  double = jax.jit(lambda x: x * 2)
  return 2 * x.nbytes / seconds(lambda: double(x), 5)[0] / 1e9


def matmul_tflops(dtype):
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / seconds(lambda: mm(a, b), 5)[0] / 1e12


def peak_tflops(device, measured):
  chip = topology.CHIPS.get(device.device_kind)
  if chip:
    return chip.flops / 1e12, f"{chip.name} spec, bf16 dense"
  for name, tflops in PEAK_TFLOPS.items():
    if name in device.device_kind:
      return tflops, f"{name} spec, bf16 dense"
  return measured, "measured matmul"


# Per chip: dense bf16 FLOP/s, HBM bytes/s and HBM bytes (vendor specifications).
MACHINES = {**{chip.name: (chip.flops, chip.bandwidth, chip.hbm)
               for chip in topology.CHIPS.values()},
            "h100": (989e12, 3350e9, 80 * 2**30), "h200": (989e12, 4800e9, 141 * 2**30)}


def estimate(report, m, prompt_tokens, machine, mfu=0.4):
  """On-paper seconds of one GvU step of the analysed recipe on `machine` chips,
  from the report's shapes and mesh:
    rollout  N token steps, each reading the weights (gathered over fsdp, split over
             tensor) and this chip's share of the KV cache at HBM bandwidth (decode
             at a few rows per chip is memory-bound; the one all-gather per rollout
             and the prefill are left out);
    reward   one decoder pass over the understanding query (the vision encoder,
             about 5% of it, left out) at `mfu` of peak;
    update   the reference log-probs (one forward) and the GRPO step at `mfu`.
  and whether the analytic per-chip memory (the larger of rollout + resident training
  state and the update; flash attention) fits in 90% of its HBM."""
  peak, bandwidth, hbm = MACHINES[machine]
  mesh = {k: int(v) for k, v in (kv.split("=") for kv in report["mesh"].split())}
  chips = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
  rollout, reward, grpo = report["sampler"]["rollout"], report["reward"], report["grpo"]
  weights, kv, _ = sampler_step_bytes(m, rollout["rows"], prompt_tokens)
  step_bytes = weights / mesh["tensor"] + kv / chips
  rollout_s = m.image_tokens * step_bytes / bandwidth
  at_mfu = lambda flops: flops / (chips * peak * mfu)
  reward_s = at_mfu(forward_flops(m, reward["images"], reward["length"], 0))
  update_s = at_mfu(update_forward_flops(m, grpo["rows"], prompt_tokens,
                                         grpo.get("shared_prompt_group", 1))
                    + grpo["model_tflop"] * 1e12)
  # The training state stays on the chips while the rollout runs beside it.
  state = (report["params"] * jnp.dtype(m.dtype).itemsize + 16 * grpo["trainable_params"]) / (
      mesh["fsdp"] * mesh["tensor"])
  rollout_peak = state + rollout["model_bytes"]
  peak_bytes = max(rollout_peak, grpo["model_bytes_flash"])
  total = rollout_s + reward_s + update_s
  return {"machine": machine, "chips": chips, "rollout_s": rollout_s, "reward_s": reward_s,
          "update_s": update_s, "step_s": total,
          "images_per_s": rollout["prompts"] * rollout["group_size"] / total,
          "rollout_peak_bytes": rollout_peak, "update_peak_bytes": grpo["model_bytes_flash"],
          "analytic_peak_bytes": peak_bytes, "fits": peak_bytes < 0.9 * hbm}


# --- Inputs ------------------------------------------------------------------------

def prompts(m, rows, length, rng):
  """Random prompt ids [rows, length] (all valid) and the CFG unconditional row."""
  ids = rng.integers(3, m.lm.vocab_size, (rows, length)).astype(np.int32)
  uncond = np.zeros((1, length), np.int32)
  uncond_valid = np.zeros((1, length), bool)
  uncond_valid[:, [0, -1]] = True
  return ids, np.ones_like(ids, bool), (uncond, uncond_valid)


def place(layout, tree, abstract, batch=False):
  """Arrays of `tree` on the layout's mesh (weights by their logical axes, or rows
  over the batch axes); with `abstract`, ShapeDtypeStructs carrying the shardings."""
  if abstract:
    return layout.abstract(tree, batch)
  return layout.put_batch(tree) if batch else layout.put_params(tree)


def understanding_query(m, images, answer_tokens, rng):
  """A random understanding batch shaped like the Janus template: 8 text tokens,
  the image slots, 8 text tokens, then the answer."""
  n_img = (m.vision.image_size // m.vision.patch_size) ** 2
  length = 16 + n_img + answer_tokens
  ids = rng.integers(3, m.lm.vocab_size, (images, length)).astype(np.int32)
  slots = np.zeros_like(ids, bool)
  slots[:, 8:8 + n_img] = True
  return {"ids": ids, "valid": np.ones_like(ids, bool), "image_slots": slots,
          "answer_mask": np.ones((images, answer_tokens), bool),
          "answer_start": length - answer_tokens}


# --- The four measurements ---------------------------------------------------------

def bench_sampler(graphdef, params, m, b, n_prompts, group_size, cfg, abstract, rng, layout):
  ids, valid, uncond = prompts(m, n_prompts, b.prompt_tokens, rng)
  ids, valid = place(layout, (ids, valid), abstract, batch=True)
  sampler = Sampler(graphdef, cfg, num_tokens=m.image_tokens, uncond_row=uncond,
                    group_size=group_size, layout=layout)
  compiled, out = compiled_figures(
      lambda: sampler.compile(params, ids, valid, jax.random.key(0)), abstract)
  if compiled is not None and out["flops"]:
    out.update(loop_costs(sampler, params, m, ids, valid, out, abstract))
  rows = n_prompts * group_size
  cache_rows = rows * (2 if cfg.guided else 1)
  weights, kv, full_cache = sampler_step_bytes(m, cache_rows, b.prompt_tokens)
  out.update(prompts=n_prompts, group_size=group_size, cfg_weight=cfg.cfg_weight,
             weights_gathered=layout.for_rollout() is not layout,
             rows=cache_rows, bytes_per_step=float(weights + kv),
             model_bytes=int(nbytes(params) / shards(layout, rollout=True)[0]
                             + full_cache / shards(layout)[1]))
  if compiled is not None and not abstract:
    t, _ = seconds(lambda: sampler(params, ids, valid, jax.random.key(0)).codes, b.repeats)
    out.update(seconds=t, ms_per_step=1000 * t / m.image_tokens, images_per_s=rows / t)
  return out


def loop_costs(sampler, params, m, ids, valid, out, abstract):
  """The rollout's FLOPs and bytes with every decode step counted: the prefill plus
  N - 1 steps, each compiled alone (Sampler.step_programs); the sampler's own
  figures, which count each decode loop's body once, are kept as compiler_*."""
  programs = sampler.step_programs(params, ids, valid)
  (_, first), (_, step) = (compiled_figures(lowered.compile, abstract) for lowered in programs)
  whole = lambda key: first[key] + (m.image_tokens - 1) * step[key]
  return {"compiler_flops": out["flops"], "compiler_bytes_accessed": out["bytes_accessed"],
          "flops": whole("flops"), "bytes_accessed": whole("bytes_accessed"),
          "step_flops": step["flops"], "step_bytes_accessed": step["bytes_accessed"],
          "hlo_tflop": whole("flops") / 1e12}


def bench_vq(graphdef, params, m, images, b, abstract, rng, layout):
  tokenizer = build.image_tokenizer(m)
  decode = jax.jit(lambda p, codes: tokenizer.decode(codes, nnx.merge(graphdef, p)))
  codes = place(layout, rng.integers(0, m.codebook_size, (images, m.image_tokens)).astype(
      np.int32), abstract, batch=True)
  compiled, out = compiled_figures(lambda: decode.lower(params, codes).compile(), abstract)
  out["images"] = images
  if not abstract:
    out["seconds"] = seconds(lambda: compiled(params, codes), b.repeats)[0]
  return out


def bench_reward(graphdef, params, m, b, images, abstract, rng, layout):
  query = understanding_query(m, images, b.reward_answer_tokens, rng)
  size = m.vision.image_size
  # An 8-bit image, as the reward reads one: the reference pass sees the same pixels.
  pixels = (rng.integers(0, 256, (images, size, size, 3)) / 127.5 - 1.0).astype(np.float32)
  placed_pixels, placed_query = place(layout, (pixels, query), abstract, batch=True)

  @jax.jit
  def reward(p, pixels, query):
    return reward_lib.intrinsic_reward(nnx.merge(graphdef, p), pixels, query, "geo_mean_prob")

  compiled, out = compiled_figures(
      lambda: reward.lower(params, placed_pixels, placed_query).compile(), abstract)
  out["images"], out["length"] = images, query["ids"].shape[1]
  if abstract:
    return out
  t_reward, (_, token_logp) = seconds(lambda: compiled(params, placed_pixels, placed_query),
                                      b.repeats)
  token_logp = np.asarray(token_logp)

  # One plain decoder pass of the same length (embeddings in, answer logits out).
  answer = slice(query["answer_start"] - 1, query["ids"].shape[1] - 1)

  @jax.jit
  def forward(p, ids, valid):
    model = nnx.merge(graphdef, p)
    hidden, _ = model.lm(model.lm.embed_tokens(ids), positions_from_valid(valid),
                         causal_mask(valid))
    return model.text_head(hidden[:, answer])

  t_forward, _ = seconds(lambda: forward(params, query["ids"], query["valid"]), b.repeats)

  # The reference algorithm: per image, its query embedded once, then one pass
  # per answer token reading that token's log-probability.
  @jax.jit
  def embed(p, ids, slots, pixels):
    return nnx.merge(graphdef, p).embed_query(ids, slots, pixels)

  @jax.jit
  def one_token(p, x, valid, position, target):
    model = nnx.merge(graphdef, p)
    hidden, _ = model.lm(x, positions_from_valid(valid), causal_mask(valid))
    logits = model.text_head(jax.lax.dynamic_index_in_dim(hidden, position, 1, False))
    return jax.nn.log_softmax(logits)[0, target]

  def reference_pass(i, j, embedded):
    if i not in embedded:
      embedded[i] = embed(params, query["ids"][i:i + 1], query["image_slots"][i:i + 1],
                          pixels[i:i + 1])
    position = query["answer_start"] - 1 + j
    return float(one_token(params, embedded[i], query["valid"][i:i + 1], position,
                           query["ids"][i, position + 1]))

  pairs = [(i, j) for i in range(images) for j in range(b.reward_answer_tokens)]
  timed_pairs = pairs[:b.reference_forwards or len(pairs)]
  reference_pass(0, 0, {})    # compile
  embedded = {}
  tic = time.perf_counter()
  reference = {(i, j): reference_pass(i, j, embedded) for i, j in timed_pairs}
  t_reference = (time.perf_counter() - tic) * len(pairs) / len(timed_pairs)
  diff = max(abs(reference[i, j] - float(token_logp[i, j])) for i, j in timed_pairs)
  out.update(seconds=t_reward, forward_seconds=t_forward, reference_seconds=t_reference,
             reference_forwards_timed=len(timed_pairs), reference_forwards=len(pairs),
             vs_forward=t_reward / t_forward, speedup_vs_reference=t_reference / t_reward,
             max_abs_diff_vs_reference=diff)
  return out


def grpo_setup(config, m, params, abstract, layout):
  """-> (graphdef, roles, tx, state) of the recipe's GvU update: LoRA adapters or
  fp32 copies of the fine-tuned modules, AdamW state, on the layout's mesh."""
  c = config.gvu
  overrides = {}
  if c.lora.enabled:
    overrides = dict(lora_rank=c.lora.rank, lora_alpha=c.lora.alpha,
                     lora_targets=tuple(c.lora.targets))
  graphdef, _ = build.abstract(m, **overrides)
  roles = lora.Roles(c.lora.enabled)
  if c.lora.enabled:
    make = lambda: build.create_adapters(m, config.seed + 1, **overrides)
    trainable = jax.eval_shape(make) if abstract else make()
  else:   # fp32 master weights of what full fine-tuning trains
    to_fp32 = lambda p: lora.full_ft_trainable(p, tuple(c.full_ft_modules))
    trainable = jax.eval_shape(to_fp32, params) if abstract else jax.jit(to_fp32)(params)
  tx, _ = optimizer.make_optimizer(c, c.steps, updates_per_step=c.mu)
  opt_state = jax.eval_shape(tx.init, trainable) if abstract else tx.init(trainable)
  state = place(layout, {"trainable": trainable, "opt_state": opt_state, "step": jnp.int32(0),
                         "rng": jax.random.key_data(jax.random.key(0))}, abstract)
  return graphdef, roles, tx, state


def bench_grpo(config, m, params, abstract, rng, layout):
  """-> (the report's grpo and ref_logp sections, the compiled update, which
  bench_step reuses). ref_logp: the reference's (and for mu > 1 the sampling
  policy's) log-probs of the rollout, one pass per rollout before the update."""
  c = config.gvu
  graphdef, roles, tx, state = grpo_setup(config, m, params, abstract, layout)
  trainable = state["trainable"]
  rows, group = c.prompts_per_step * c.group_size, rl.shared_prompt_group(c)
  ids, valid, _ = prompts(m, c.prompts_per_step, config.bench.prompt_tokens, rng)
  batch = {"prompt_ids": np.repeat(ids, c.group_size, 0),   # prompt-major, as a rollout's
           "prompt_valid": np.repeat(valid, c.group_size, 0),
           "codes": rng.integers(0, m.codebook_size, (rows, m.image_tokens)).astype(np.int32),
           "advantages": rng.normal(size=rows).astype(np.float32),
           "ref_logp": np.full((rows, m.image_tokens), -np.log(m.codebook_size), np.float32)}
  if c.mu > 1:
    batch["old_logp"] = batch["ref_logp"]
  batch = place(layout, batch, abstract, batch=True)
  logp = rl.make_logp_fn(graphdef, roles, with_policy=c.mu > 1, shared_prompt_group=group)
  rollout = {k: batch[k] for k in ("prompt_ids", "prompt_valid", "codes")}
  _, ref_logp = compiled_figures(
      lambda: logp.lower(trainable, params, rollout).compile(), abstract)
  ref_logp["rows"] = rows
  step = rl.make_grpo_step(graphdef, roles, tx, clip_eps=c.clip_eps, beta=c.beta,
                           grad_accum=c.grad_accum, layout=layout, state=state,
                           shared_prompt_group=group)
  compiled, out = compiled_figures(lambda: step.lower(state, params, batch).compile(), abstract)
  length = config.bench.prompt_tokens + m.image_tokens - 1
  model_flops = (3 if not c.lora.enabled else 2) * update_forward_flops(
      m, rows, config.bench.prompt_tokens, group)
  frozen_bytes = nbytes(params)
  flash = attention_lib.resolve(m.get("attention", "xla"), m.dtype) in ("cudnn", "splash")
  out.update(rows=rows, length=length, lora=bool(c.lora.enabled), remat=bool(m.remat),
             shared_prompt_group=group, mu=c.mu,
             trainable_bytes_per_device=topology.bytes_per_device(state["trainable"]),
             optimizer_bytes_per_device=topology.bytes_per_device(state["opt_state"]),
             grad_accum=c.grad_accum, trainable_params=count(trainable),
             model_tflop=model_flops / 1e12,
             model_bytes=grpo_bytes_model(m, rows // c.grad_accum, length, count(trainable),
                                          frozen_bytes, flash, layout),
             model_bytes_flash=grpo_bytes_model(m, rows // c.grad_accum, length,
                                                 count(trainable), frozen_bytes, True, layout))
  if not abstract:
    holder = {"state": state}

    def one_step():
      holder["state"], metrics = compiled(holder["state"], params, batch)
      return metrics["loss"]

    out["seconds"] = seconds(one_step, config.bench.repeats)[0]
  return out, ref_logp, compiled


def bench_attention(m, b, rows, rng):
  """The kernel `model.attention` picks on this device (cuDNN flash on GPU, splash
  on TPU; models/attention.py) against the XLA reference at the GRPO step's shape,
  causal, the first row left-padded: max |difference| over real query positions
  and the seconds of each."""
  kernel = attention_lib.resolve(m.get("attention", "xla"), m.dtype)
  lm, dtype = m.lm, jnp.dtype(m.dtype)
  length, head_dim = b.prompt_tokens + m.image_tokens - 1, lm.hidden // lm.heads
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  q = normal(rows, length, lm.heads, head_dim)
  k, v = normal(rows, lm.kv_heads, length, head_dim), normal(rows, lm.kv_heads, length, head_dim)
  valid = np.ones((rows, length), bool)
  valid[0, :b.prompt_tokens // 2] = False
  mask = causal_mask(jnp.asarray(valid))
  run = {name: jax.jit(functools.partial(attention_lib.attention, implementation=name))
         for name in {kernel, "xla"}}
  t_kernel, out = seconds(lambda: run[kernel](q, k, v, mask), b.repeats)
  t_xla, reference = seconds(lambda: run["xla"](q, k, v, mask), b.repeats)
  diff = jnp.abs(out.astype(jnp.float32) - reference.astype(jnp.float32))[valid]
  return {"kernel": kernel, "rows": rows, "length": length, "seconds": t_kernel,
          "xla_seconds": t_xla, "max_abs_diff_vs_xla": float(diff.max())}


def bench_step(config, m, params, rng, layout, update):
  """One whole GvU step at the recipe's shapes (prompts_per_step x G, its sampling,
  LoRA or full fine-tuning) as gvu.py runs it: sample, VQ decode, reward (the
  policy judging `reward_answer_tokens` answer tokens), advantages, reference
  log-probs and `update`, bench_grpo's compiled GRPO step (the same shapes).
  -> seconds per phase of the fastest of `repeats` steps."""
  c, b = config.gvu, config.bench
  graphdef, roles, _, state = grpo_setup(config, m, params, False, layout)
  g = c.group_size
  ids, valid, uncond = prompts(m, c.prompts_per_step, b.prompt_tokens, rng)
  query = layout.put_batch(understanding_query(m, len(ids) * g, b.reward_answer_tokens, rng))
  sampler = Sampler(graphdef, SamplingConfig(**c.sampling), num_tokens=m.image_tokens,
                    uncond_row=uncond, group_size=g, layout=layout)
  tokenizer = build.VQTokenizer()
  decode = jax.jit(lambda p, codes: tokenizer.decode(codes, nnx.merge(graphdef, p)))
  reward = jax.jit(lambda t, f, pixels, query: reward_lib.intrinsic_reward(
      nnx.merge(graphdef, roles.policy(t, f)), pixels, query, "geo_mean_prob")[0])
  advantages = jax.jit(functools.partial(rl.group_advantages, group_size=g))
  logp = rl.make_logp_fn(graphdef, roles, with_policy=False,
                         shared_prompt_group=rl.shared_prompt_group(c))
  prompt_rows = layout.put_batch({"prompt_ids": np.repeat(ids, g, 0),
                                  "prompt_valid": np.repeat(valid, g, 0)})
  ids, valid = layout.put_batch((ids, valid))
  holder = {"state": state}

  def one_step(key):
    clock, phases = [time.perf_counter()], {}

    def done(phase, out):
      jax.block_until_ready(out)
      clock.append(time.perf_counter())
      phases[phase] = clock[-1] - clock[-2]
      return out

    trainable = holder["state"]["trainable"]
    policy = roles.policy(trainable, params)
    codes = done("sample", sampler(policy, ids, valid, key).codes)
    pixels = done("decode", decode(policy, codes))
    rewards = done("reward", reward(trainable, params, pixels, query))
    batch = dict(prompt_rows, codes=codes, advantages=advantages(rewards))
    batch.update(logp(trainable, params, batch))
    holder["state"], metrics = update(holder["state"], params, batch)
    done("update", metrics["loss"])
    return phases

  one_step(jax.random.key(0))   # compiles every phase
  steps = [one_step(jax.random.key(i + 1)) for i in range(b.repeats)]
  phases = min(steps, key=lambda p: sum(p.values()))
  return {"rows": len(prompt_rows["prompt_ids"]), "seconds": sum(phases.values()),
          "phases": phases}


# --- transformers, same config, same process ------------------------------------------

def transformers_sampler(m, b, batches):
  """Seconds of transformers' Janus `generate` (image mode, CFG) per batch size, on
  random weights of the same config: {B: seconds}, or None without transformers."""
  try:
    import torch
    from transformers import DynamicCache, GenerationConfig
  except ImportError:
    return None
  from gvu_jax.bench_reference import janus_model
  model, device = janus_model(m, torch.bfloat16 if m.dtype == "bfloat16" else torch.float32)
  generation = GenerationConfig(do_sample=True, guidance_scale=b.cfg_weight, pad_token_id=0,
                                bos_token_id=1, max_new_tokens=m.image_tokens,
                                generation_kwargs={"boi_token_id": 2})
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  out = {}
  for n in batches:
    ids = torch.randint(3, m.lm.vocab_size - 10, (n, b.prompt_tokens), device=device)
    ids[:, 0], ids[:, -1] = 1, 2
    def generate(cache=True):
      # A DynamicCache where this transformers version takes one (its static-cache
      # default breaks in image mode; transformers 5.2x no longer accepts it).
      kwargs = dict(past_key_values=DynamicCache()) if cache else {}
      return model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                            generation_config=generation, **kwargs)

    with torch.no_grad():
      try:
        generate()   # warm-up
      except ValueError:
        generate = functools.partial(generate, cache=False)
        generate()
      best = float("inf")
      for _ in range(b.repeats):
        sync()
        tic = time.perf_counter()
        generate()
        sync()
        best = min(best, time.perf_counter() - tic)
    out[n] = best
  return out


def reference_step(config, m):
  """The GvU authors' loop (bench_reference.py) at the shapes of bench_step."""
  from gvu_jax import bench_reference
  c, b = config.gvu, config.bench
  if not c.lora.enabled:
    return None   # the reference loop trains PEFT LoRA adapters
  return bench_reference.reference_step(
      m, prompts=c.prompts_per_step, group_size=c.group_size, sampling=dict(c.sampling),
      prompt_tokens=b.prompt_tokens, answer_tokens=b.reward_answer_tokens,
      lora_rank=c.lora.rank, lora_alpha=c.lora.alpha, lora_targets=tuple(c.lora.targets),
      lr=c.lr, beta=c.beta, clip_eps=c.clip_eps, repeats=b.repeats, seed=config.seed)


# --- The run -----------------------------------------------------------------------

def measure(report, config, m, graphdef, params, sampler_params, abstract, rng, layout, log):
  """The four measurements, into `report`."""
  b, c = config.bench, config.gvu
  log("sampler")
  if abstract:   # the recipe's own rollout: prompts_per_step x G samples, its sampling
    report["sampler"] = {"rollout": bench_sampler(
        graphdef, sampler_params, m, b, c.prompts_per_step, c.group_size,
        SamplingConfig(**c.sampling), abstract, rng, layout)}
  else:
    report["sampler"] = {str(n): bench_sampler(
        graphdef, sampler_params, m, b, n, 1, SamplingConfig(cfg_weight=b.cfg_weight),
        abstract, rng, layout) for n in b.sampler_batches}
  rollout = c.prompts_per_step * c.group_size   # compile only: the step's own images
  log("VQ decode")
  report["vq_decode"] = bench_vq(graphdef, sampler_params, m, rollout if abstract else
                                 b.vq_images, b, abstract, rng, layout)
  log("reward and the reference algorithm")
  report["reward"] = bench_reward(graphdef, sampler_params, m, b,
                                  rollout if abstract else b.reward_images, abstract, rng,
                                  layout)
  log("reference log-probs and the GRPO step")
  report["grpo"], report["ref_logp"], update = bench_grpo(config, m, params, abstract, rng,
                                                          layout)
  if not abstract:
    log("attention kernel against XLA")
    report["attention_check"] = bench_attention(m, b, c.prompts_per_step * c.group_size, rng)
    log("one whole GvU step")
    report["step"] = bench_step(config, m, params, rng, layout, update)


def run(config, workdir):
  start = time.perf_counter()
  log = lambda what: print(f"bench: {what} ({time.perf_counter() - start:.0f} s)", flush=True)
  m = model_block(config)
  b = config.bench
  abstract = compile_only(config)
  slice_devices = topology.devices(b.topology) if b.get("topology") else None
  rng = np.random.default_rng(config.seed)
  layout = (sharding.Layout.from_config(config, slice_devices) if "mesh" in config
            else sharding.single_device())
  params = place(layout, base_params(config, m, abstract), abstract)
  graphdef, _ = build.abstract(m)
  device = layout.mesh.devices.flat[0]
  dtype = jnp.dtype(m.dtype)
  report = {"device": str(device), "device_kind": device.device_kind,
            "backend": device.platform, "jax": jax.__version__,
            "model": config.get("checkpoint") or config.get("expect_model") or "embedded world",
            "params": count(params), "dtype": m.dtype, "attention": m.get("attention", "xla"),
            "remat": bool(m.remat), "analysis_only": abstract, "mesh": layout.describe(),
            "frozen_bytes_per_device": topology.bytes_per_device(params)}
  if not abstract:
    report["copy_GBps"] = copy_bandwidth_GBps(dtype)
    report["matmul_tflops"] = matmul_tflops(dtype)
  # The sampler, VQ and reward read the weights in the compute dtype (a LoRA policy
  # would add its adapters; they are 0.1% of the bytes).
  to_compute = lambda p: in_compute_dtype(p, graphdef)
  sampler_params = place(layout, jax.eval_shape(to_compute, params) if abstract else
                         jax.jit(to_compute)(params), abstract)
  with layout.active(), topology.compiling_for(slice_devices):
    measure(report, config, m, graphdef, params, sampler_params, abstract, rng, layout, log)
  if not abstract:
    for s in report["sampler"].values():
      s["roofline"] = s["bytes_per_step"] / (report["copy_GBps"] * 1e9) / (
          s["ms_per_step"] / 1000)
    g = report["grpo"]
    peak, source = peak_tflops(device, report["matmul_tflops"])
    g.update(model_tflops=g["model_tflop"] / g["seconds"], peak_tflops=peak, peak_source=source)
    g["mfu"] = g["model_tflops"] / peak
    report["reward_speedup_vs_reference"] = report["reward"]["speedup_vs_reference"]
    log("transformers sampler")
    theirs = transformers_sampler(m, b, b.sampler_batches) if b.transformers else None
    if theirs:
      for n, t in theirs.items():
        s = report["sampler"][str(n)]
        s.update(transformers_seconds=t, transformers_ms_per_step=1000 * t / m.image_tokens,
                 speedup_vs_transformers=t / s["seconds"])
      report["sampler_speedup_vs_transformers"] = report["sampler"][
          str(b.sampler_batches[-1])]["speedup_vs_transformers"]
    log("the reference loop's GvU step (PyTorch)")
    step = report["step"]
    step["reference"] = reference_step(config, m) if b.transformers else None
    if step["reference"]:
      report["step_speedup_vs_reference"] = step["reference"]["seconds"] / step["seconds"]
  if abstract and b.get("machine"):
    report["estimate"] = estimate(report, m, b.prompt_tokens, b.machine)
  peaks = [x["peak_bytes"] for x in (*report["sampler"].values(), report["vq_decode"],
                                     report["reward"], report["ref_logp"], report["grpo"])
           if x["peak_bytes"]]
  report["largest_peak_bytes"] = max(peaks) if peaks else None
  if slice_devices:
    report.update(topology.summary(report, b.topology, slice_devices))

  files.write_atomic(os.path.join(workdir, "bench.json"), json.dumps(report, indent=1))
  print(topology.table(report) if slice_devices else table(report))
  return report


def table(r):
  """The report as a markdown table."""
  gb = lambda x: "-" if x is None else f"{x / 2**30:.2f} GiB"
  num = lambda x, fmt: "-" if x is None else format(x, fmt)
  lines = [f"bench: {r['model']} ({r['params'] / 1e6:.0f} M params, {r['dtype']}, "
           f"attention {r['attention']}) on {r['device_kind']}, mesh {r['mesh']}"
           " (memory per device)"
           + ("" if r["analysis_only"] else
              f"; copy {r['copy_GBps']:.0f} GB/s, matmul {r['matmul_tflops']:.2f} TFLOP/s"),
           "", "| what | time | rate | vs | memory: XLA analysis (analytic model) |",
           "|---|---|---|---|---|"]
  for n, s in r["sampler"].items():
    rate = (f"{s['ms_per_step']:.2f} ms/step, {s['images_per_s']:.2f} img/s, "
            f"{s['roofline']:.0%} of roofline") if "seconds" in s else "-"
    vs = (f"{s['speedup_vs_transformers']:.2f}x transformers "
          f"({s['transformers_ms_per_step']:.2f} ms/step)") if "transformers_seconds" in s else "-"
    what = f"{s['prompts']} prompts x G={s['group_size']}, CFG {s['cfg_weight']:g}"
    lines.append(f"| sampler ({n}), {what}, {s['rows']} rows | {num(s.get('seconds'), '.3f')} s"
                 f" | {rate} | {vs} | {gb(s['peak_bytes'])} ({gb(s['model_bytes'])}) |")
  v = r["vq_decode"]
  lines.append(f"| VQ decode, {v['images']} images | {num(v.get('seconds'), '.3f')} s | - | - "
               f"| {gb(v['peak_bytes'])} |")
  w = r["reward"]
  vs = (f"{w['vs_forward']:.2f}x one forward ({w['forward_seconds']:.3f} s); "
        f"{w['speedup_vs_reference']:.1f}x faster than the reference "
        f"({w['reference_seconds']:.2f} s)") if "seconds" in w else "-"
  lines.append(f"| reward, {w['images']} images x {w['length']} tokens | "
               f"{num(w.get('seconds'), '.3f')} s | - | {vs} | {gb(w['peak_bytes'])} |")
  g = r["grpo"]
  rate = (f"{g['model_tflops']:.3g} TFLOP/s, MFU {g['mfu']:.1%} of {g['peak_tflops']:.3g} "
          f"({g['peak_source']})") if "seconds" in g else "-"
  lines.append(f"| GRPO step, {g['rows']} rows x {g['length']} tokens, "
               f"{'LoRA' if g['lora'] else 'full'}{', remat' if g['remat'] else ''} | "
               f"{num(g.get('seconds'), '.3f')} s | {rate} | model {g['model_tflop']:.2f} "
               f"TFLOP, XLA {num(g['hlo_tflop'], '.2f')} TFLOP per device | {gb(g['peak_bytes'])} "
               f"({gb(g['model_bytes'])}; {gb(g['model_bytes_flash'])} with flash attention) |")
  a = r.get("attention_check")
  if a:
    lines.append(f"| attention: {a['kernel']} against XLA, {a['rows']} rows x {a['length']} "
                 f"tokens | {a['seconds'] * 1000:.2f} ms | - | XLA {a['xla_seconds'] * 1000:.2f} ms"
                 f"; max abs diff {a['max_abs_diff_vs_xla']:.2g} | - |")
  st = r.get("step")
  if st:
    split = lambda p: ", ".join(f"{k} {v:.2f}" for k, v in p.items())
    ref = st.get("reference")
    vs = (f"{r['step_speedup_vs_reference']:.2f}x the reference loop ({ref['seconds']:.2f} s: "
          f"{split(ref['phases'])})") if ref else "-"
    lines.append(f"| GvU step, {st['rows']} images | {st['seconds']:.3f} s | "
                 f"{split(st['phases'])} | {vs} | - |")
  e = r.get("estimate")
  if e:
    lines.append(f"\non paper, {e['chips']} {e['machine']} chips: rollout {e['rollout_s']:.2f} s + "
                 f"reward {e['reward_s']:.2f} s + update {e['update_s']:.2f} s = "
                 f"{e['step_s']:.2f} s per step, {e['images_per_s']:.1f} images/s; analytic "
                 f"memory {gb(e['analytic_peak_bytes'])} per chip "
                 f"({'fits' if e['fits'] else 'does NOT fit'})")
  return "\n".join(lines)
