"""Each program of a GvU step built at the recipe's shapes, compiled (with XLA's
memory and cost analyses) and, on real weights, timed: the sampler, VQ decode,
the intrinsic reward beside the reference algorithm, the reference log-probs and
the GRPO update, the attention kernel, one whole step, and transformers' sampler
in the same process (tools/bench.py assembles them into the report)."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvu_jax.infra.accelerators import CHIPS, PEAK_TFLOPS
from gvu_jax.infra.errors import InputError
from gvu_jax.models import attention as attention_lib, build
from gvu_jax.models.umm import causal_mask, positions_from_valid
from gvu_jax.rl import grpo, reward as reward_lib, state as train_state
from gvu_jax.rl.sampling import Sampler, SamplingConfig
from gvu_jax.tools import costs, topology



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
  chip = CHIPS.get(device.device_kind)
  if chip:
    return chip.flops / 1e12, f"{chip.name} spec, bf16 dense"
  for name, tflops in PEAK_TFLOPS.items():
    if name in device.device_kind:
      return tflops, f"{name} spec, bf16 dense"
  return measured, "measured matmul"


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
  weights, kv, full_cache = costs.sampler_step_bytes(m, cache_rows, b.prompt_tokens)
  out.update(prompts=n_prompts, group_size=group_size, cfg_weight=cfg.cfg_weight,
             weights_gathered=layout.for_rollout() is not layout,
             rows=cache_rows, bytes_per_step=float(weights + kv),
             model_bytes=int(costs.nbytes(params) / costs.shards(layout, rollout=True)[0]
                             + full_cache / costs.shards(layout)[1]))
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
  """-> (graphdef, roles, tx, state) of the recipe's GvU update (rl/state.py) on
  the layout's mesh."""
  graphdef, roles, (tx, _), state = train_state.init(config.gvu, m, params, config.seed, abstract)
  return graphdef, roles, tx, place(layout, state, abstract)


def bench_grpo(config, m, params, abstract, rng, layout):
  """-> (the report's grpo and ref_logp sections, the compiled update, which
  bench_step reuses). ref_logp: the reference's (and for mu > 1 the sampling
  policy's) log-probs of the rollout, one pass per rollout before the update."""
  c = config.gvu
  graphdef, roles, tx, state = grpo_setup(config, m, params, abstract, layout)
  trainable = state["trainable"]
  rows, group = c.prompts_per_step * c.group_size, grpo.shared_prompt_group(c)
  ids, valid, _ = prompts(m, c.prompts_per_step, config.bench.prompt_tokens, rng)
  batch = {"prompt_ids": np.repeat(ids, c.group_size, 0),   # prompt-major, as a rollout's
           "prompt_valid": np.repeat(valid, c.group_size, 0),
           "codes": rng.integers(0, m.codebook_size, (rows, m.image_tokens)).astype(np.int32),
           "advantages": rng.normal(size=rows).astype(np.float32),
           "ref_logp": np.full((rows, m.image_tokens), -np.log(m.codebook_size), np.float32)}
  if c.mu > 1:
    batch["old_logp"] = batch["ref_logp"]
  batch = place(layout, batch, abstract, batch=True)
  logp = grpo.make_logp_fn(graphdef, roles, with_policy=c.mu > 1, shared_prompt_group=group)
  rollout = {k: batch[k] for k in ("prompt_ids", "prompt_valid", "codes")}
  _, ref_logp = compiled_figures(
      lambda: logp.lower(trainable, params, rollout).compile(), abstract)
  ref_logp["rows"] = rows
  step = grpo.make_grpo_step(graphdef, roles, tx, clip_eps=c.clip_eps, beta=c.beta,
                           grad_accum=c.grad_accum, layout=layout, state=state,
                           shared_prompt_group=group)
  compiled, out = compiled_figures(lambda: step.lower(state, params, batch).compile(), abstract)
  length = config.bench.prompt_tokens + m.image_tokens - 1
  model_flops = (3 if not c.lora.enabled else 2) * costs.update_forward_flops(
      m, rows, config.bench.prompt_tokens, group)
  frozen_bytes = costs.nbytes(params)
  flash = attention_lib.resolve(m.get("attention", "xla"), m.dtype) in ("cudnn", "splash")
  out.update(rows=rows, length=length, lora=bool(c.lora.enabled), remat=bool(m.remat),
             shared_prompt_group=group, mu=c.mu,
             trainable_bytes_per_device=topology.bytes_per_device(state["trainable"]),
             optimizer_bytes_per_device=topology.bytes_per_device(state["opt_state"]),
             grad_accum=c.grad_accum, trainable_params=costs.count(trainable),
             model_tflop=model_flops / 1e12,
             model_bytes=costs.grpo_bytes_model(m, rows // c.grad_accum, length,
                                                costs.count(trainable), frozen_bytes, flash,
                                                layout),
             model_bytes_flash=costs.grpo_bytes_model(m, rows // c.grad_accum, length,
                                                      costs.count(trainable), frozen_bytes, True,
                                                      layout))
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
  LoRA or full fine-tuning) as rl/step.py runs it: sample, VQ decode, reward (the
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
  advantages = jax.jit(functools.partial(grpo.group_advantages, group_size=g))
  logp = grpo.make_logp_fn(graphdef, roles, with_policy=False,
                         shared_prompt_group=grpo.shared_prompt_group(c))
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
  from gvu_jax.tools.bench_reference import janus_model
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
  from gvu_jax.tools import bench_reference
  c, b = config.gvu, config.bench
  if not c.lora.enabled:
    return None   # the reference loop trains PEFT LoRA adapters
  return bench_reference.reference_step(
      m, prompts=c.prompts_per_step, group_size=c.group_size, sampling=dict(c.sampling),
      prompt_tokens=b.prompt_tokens, answer_tokens=b.reward_answer_tokens,
      lora_rank=c.lora.rank, lora_alpha=c.lora.alpha, lora_targets=tuple(c.lora.targets),
      lr=c.lr, beta=c.beta, clip_eps=c.clip_eps, repeats=b.repeats, seed=config.seed)
