"""The GvU stage: self-supervised RL of the generation branch on the model's own
understanding likelihood (docs/design.md §1-§4). One step:

  prompts -> rollout: sample G images each, decode -> score: intrinsic reward
  -> training_batch: group advantages -> update: GRPO, mu inner iterations over
  the same rollout -> log

Nothing here sees the judge, the world's labels or ground-truth renders: the
only signal is the reward the model computes from its own decoded pixels.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvu_jax import (checkpoint, context, faults, hosts, lora, metrics, optimizer, preemption,
                     profiling, provenance, rl, sharding, world)
from gvu_jax import reward as reward_lib
from gvu_jax.data import pipeline
from gvu_jax.errors import NonFiniteError
from gvu_jax.evaluation import grid
from gvu_jax.models import build
from gvu_jax.pixels import to_uint8
from gvu_jax.sampling import Sampler, SamplingConfig
from gvu_jax.world import judge


def _setup(ctx, base_params):
  """Model definition with adapters (if LoRA), roles, optimizer, initial state,
  the frozen weights and the checkpoint store."""
  config, c = ctx.config, ctx.config.gvu
  overrides = {}
  if c.lora.enabled:
    overrides = dict(lora_rank=c.lora.rank, lora_alpha=c.lora.alpha,
                     lora_targets=tuple(c.lora.targets))
  signature = dict(build.signature(ctx.model), gvu_lora=overrides)
  if not c.lora.enabled and c.full_ft_modules:   # (recorded only when set, as before it existed)
    lora.check_modules(base_params, c.full_ft_modules)   # before anything is written
    signature["gvu_full_ft_modules"] = list(c.full_ft_modules)
  if config.get("checkpoint"):
    signature["checkpoint"] = os.path.abspath(config.checkpoint)
  checkpoint.check_model_config(ctx.path("gvu"), signature)
  graphdef, _ = build.abstract(ctx.model, **overrides)
  roles = lora.Roles(c.lora.enabled)
  frozen = base_params   # a converted checkpoint is itself the reference: nothing to copy
  reference_path = ctx.path("gvu", "reference")
  if not config.get("checkpoint"):
    if hosts.agreed("gvu reference", lambda: os.path.exists(reference_path)):
      # a resumed run keeps the reference it started with
      frozen = checkpoint.load_frozen(reference_path, base_params)
    else:
      checkpoint.save_frozen(reference_path, base_params)
  if c.lora.enabled:
    trainable = build.create_adapters(ctx.model, config.seed + 1, **overrides)
  else:   # fp32 master weights of what full fine-tuning trains
    trainable = lora.full_ft_trainable(frozen, tuple(c.full_ft_modules))
  # mu updates per step: the schedule is sized in updates (steps x mu)
  tx, schedule = optimizer.make_optimizer(c, c.steps, updates_per_step=c.mu)
  state = {"trainable": trainable, "opt_state": tx.init(trainable), "step": jnp.int32(0),
           "rng": jax.random.key_data(jax.random.key(config.seed))}
  state, frozen = ctx.layout.put_params(state), ctx.layout.put_params(frozen)
  store = checkpoint.CheckpointStore(ctx.path("gvu", "checkpoints"), c.keep)
  return graphdef, roles, (tx, schedule), state, frozen, store


def load(ctx, base_params):
  """The latest GvU policy in the workdir -> (graphdef, params), or None."""
  if not hosts.agreed("gvu checkpoints", lambda: os.path.exists(ctx.path("gvu", "checkpoints"))):
    return None
  graphdef, roles, _, state, frozen, store = _setup(ctx, base_params)
  latest = store.latest_step()
  if latest is not None:
    state, _ = store.restore(latest, state)
  store.close()
  return None if latest is None else (graphdef, roles.policy(state["trainable"], frozen))


def make_reward_fn(ctx, graphdef, roles):
  """Jitted (trainable, frozen, pixels, query) -> (reward, token log-likelihoods),
  with the policy (default) or the frozen reference as the judge."""
  r = ctx.config.reward
  weights = ctx.reward_weights

  def reward_fn(trainable, frozen, pixels, query):
    params = (roles.policy if r.judge == "policy" else roles.reference)(trainable, frozen)
    return reward_lib.intrinsic_reward(nnx.merge(graphdef, params), pixels, query,
                                       r.aggregation, weights, r.quantize_pixels)

  return jax.jit(reward_fn)


def compile_ahead(ctx, sampler, grpo_step, state, frozen, roles):
  """Compiles the rollout and the update for this run's shapes and mesh before the
  first step and prints what each holds per device, so a batch that does not fit
  fails in seconds, not after the first rollout. Returns the compiled update."""
  c, layout = ctx.config.gvu, ctx.layout
  rows, tokens = c.prompts_per_step * c.group_size, ctx.model.image_tokens
  ids, valid = layout.put_batch(
      ctx.templates.generation([ctx.gvu_specs[0].text] * c.prompts_per_step))
  rollout = sampler.compile(roles.policy(state["trainable"], frozen), ids, valid,
                            jax.random.key(0))
  shapes = {"prompt_ids": ((rows, ids.shape[1]), jnp.int32),
            "prompt_valid": ((rows, ids.shape[1]), jnp.bool_),
            "codes": ((rows, tokens), jnp.int32), "advantages": ((rows,), jnp.float32),
            "ref_logp": ((rows, tokens), jnp.float32)}
  if c.mu > 1:
    shapes["old_logp"] = shapes["ref_logp"]
  batch = layout.abstract({k: jax.ShapeDtypeStruct(shape, dtype)
                           for k, (shape, dtype) in shapes.items()}, batch=True)
  update = grpo_step.lower(state, frozen, batch).compile()
  if hosts.is_main():
    mib = lambda compiled: f"{(sharding.peak_bytes(compiled) or 0) / 2**20:.1f} MiB"
    print(f"gvu: mesh {layout.describe()}; per device: rollout {mib(rollout)}, "
          f"update {mib(update)}")
  return update


def prompt_stream(ctx):
  """The GvU prompts, gvu.prompts_per_step a step (data/pipeline.py): the
  embedded world's per-step draws, or a grain pipeline over data.prompts."""
  config = ctx.config
  n = config.gvu.prompts_per_step
  if not config.get("checkpoint"):
    return pipeline.DrawnPrompts(ctx.gvu_specs, n, config.seed)
  context.check_prompts(ctx.templates, ctx.gvu_specs, f"data.prompts={config.data.prompts}")
  return pipeline.GrainPrompts(ctx.gvu_specs, n, config.seed, config.data.balance_tags,
                               name=f"data.prompts={config.data.prompts}")


@dataclasses.dataclass
class StepFunctions:
  """The jitted pieces of one GvU step, built once per run."""
  sample: Sampler
  decode: Callable        # (policy, codes) -> pixels (or codes, in token space)
  reward: Callable        # (trainable, frozen, pixels, query) -> (rewards, token log-liks)
  advantages: Callable    # rewards -> group-normalised advantages
  shuffle: Callable       # (rewards, group_size, key) -> rewards permuted within groups
  logp: Callable          # (trainable, frozen, batch) -> {"ref_logp"[, "old_logp"]}
  update: Callable        # (state, frozen, batch) -> (state, metrics)


@dataclasses.dataclass
class Rollout:
  """G images for each of the step's prompts (rows are prompt-major)."""
  texts: list             # the step's prompts
  prompt: tuple           # (ids, valid) host arrays, one row per prompt
  samples: Any            # sampling.Samples: codes and the sampler's log-probs
  pixels: Any             # decoded images (image codes for a token-space reward)
  seconds: dict


@dataclasses.dataclass
class Scored:
  """The intrinsic reward of every image of a rollout."""
  rewards: Any            # [rows]: what the model's understanding says of each image
  token_logp: Any         # [rows, L]: the per-token log-likelihoods behind it
  answer_mask: Any        # [rows, L]: which of those are prompt tokens
  used: Any               # the rewards the update sees (shuffled in the control run)
  seconds: dict


def _timed(fn, *args):
  tic = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - tic


def step_functions(ctx, graphdef, roles, tx, schedule, state):
  c = ctx.config.gvu
  return StepFunctions(
      sample=Sampler(graphdef, SamplingConfig(**c.sampling), num_tokens=ctx.model.image_tokens,
                     uncond_row=ctx.templates.unconditional(1), group_size=c.group_size,
                     layout=ctx.layout),
      decode=jax.jit(lambda params, codes: ctx.image_tokenizer.decode(
          codes, nnx.merge(graphdef, params))),
      reward=make_reward_fn(ctx, graphdef, roles),
      advantages=jax.jit(functools.partial(rl.group_advantages, group_size=c.group_size,
                                           scale_by_std=c.scale_advantages_by_std)),
      shuffle=jax.jit(rl.shuffle_within_groups, static_argnums=1),
      logp=rl.make_logp_fn(graphdef, roles, with_policy=c.mu > 1,
                           shared_prompt_group=rl.shared_prompt_group(c)),
      update=rl.make_grpo_step(graphdef, roles, tx, clip_eps=c.clip_eps, beta=c.beta,
                               grad_accum=c.grad_accum, schedule=schedule, layout=ctx.layout,
                               state=state, shared_prompt_group=rl.shared_prompt_group(c)))


def rollout(ctx, fns, policy, texts, key) -> Rollout:
  """Samples G images per prompt and decodes them (design.md §4: sample, decode)."""
  prompt = ctx.templates.generation(texts)
  ids, valid = ctx.layout.put_batch(prompt)
  samples, t_sample = _timed(fns.sample, policy, ids, valid, key)
  pixels, t_decode = _timed(fns.decode, policy, samples.codes)
  return Rollout(texts, prompt, samples, pixels, {"rollout": t_sample, "decode": t_decode})


def score(ctx, fns, state, frozen, r: Rollout, key) -> Scored:
  """The intrinsic reward of each image: the likelihood of its prompt under the
  understanding branch (design.md §2); shuffled within groups in the control run,
  replaced by the world's judge in the ceiling run (the update sees `used`)."""
  g = ctx.config.gvu.group_size
  query = ctx.templates.understanding(r.texts).arrays(repeat=g)   # encoded once per prompt
  answer_mask, query = query["answer_mask"], ctx.layout.put_batch(query)
  (rewards, token_logp), seconds = _timed(fns.reward, state["trainable"], frozen, r.pixels,
                                          query)
  used = rewards
  if ctx.config.reward.kind == "shuffled":
    used = fns.shuffle(rewards, g, jax.random.fold_in(key, 1))
  if ctx.config.reward.kind == "judge":   # the ceiling: a perfect reward in its place
    used = ctx.layout.put_batch(judge_verdicts(r.texts, r.samples.codes, g))
  return Scored(rewards, token_logp, answer_mask, used, {"reward": seconds})


def judge_verdicts(texts, codes, group_size):
  """1.0 where the embedded world's pixel judge accepts an image for its prompt,
  else 0.0: the reward of the ceiling run (reward.kind=judge), float32 [rows]."""
  specs = {s.text: s for s in world.all_specs()}
  images = world.codes_to_image(sharding.to_host(codes))
  rows = [specs[t] for t in texts for _ in range(group_size)]
  return judge.judge_batch(images, rows).astype(np.float32)


def training_batch(ctx, fns, state, frozen, r: Rollout, s: Scored, step):
  """The update's inputs: each prompt repeated per image, the sampled codes, their
  group advantages (design.md §3) and the reference's (and, for mu > 1, the
  sampling policy's) token log-probs."""
  g = ctx.config.gvu.group_size
  advantages = faults.poisoned("advantages", step, fns.advantages(s.used))
  batch = ctx.layout.put_batch({"prompt_ids": np.repeat(r.prompt[0], g, 0),
                                "prompt_valid": np.repeat(r.prompt[1], g, 0),
                                "codes": r.samples.codes, "advantages": advantages})
  batch.update(ctx.layout.put_batch(fns.logp(state["trainable"], frozen, batch)))
  return batch


def update(fns, state, frozen, batch, mu):
  """mu GRPO updates over the same rollout -> (state, last update's metrics, how
  many of the mu were skipped as non-finite)."""
  skips = []
  for _ in range(mu):
    state, m = fns.update(state, frozen, batch)
    skips.append(m["skipped"])
  m = metrics.to_python(jax.block_until_ready(m))
  return state, m, int(sum(float(x) for x in skips))


def step_metrics(m, r: Rollout, s: Scored, group_size, seconds):
  """What metrics.jsonl records of a step beside the update's own metrics."""
  rewards = sharding.to_host(s.rewards)
  token_lp = sharding.to_host(s.token_logp)[s.answer_mask]
  m.update(reward_mean=float(np.mean(rewards)), reward_std=float(np.std(rewards)),
           reward_group_std=float(rewards.reshape(-1, group_size).std(1).mean()),
           token_logp_mean=float(token_lp.mean()), token_logp_min=float(token_lp.min()),
           sampled_logp_mean=float(np.mean(sharding.to_host(r.samples.logp_sampled))),
           **{f"time_{k}": v for k, v in seconds.items()},
           images_per_s=len(rewards) / sum(seconds.values()))
  return m


def save_grid(ctx, r: Rollout, s: Scored, step):
  """The first 32 images of the step with their prompts and rewards -> the grid."""
  g = ctx.config.gvu.group_size
  rows = [t for t in r.texts for _ in range(g)]
  captions = [f"{t} r={float(x):.2f}" for t, x in zip(rows, sharding.to_host(s.rewards))]
  images = sharding.to_host(to_uint8(r.pixels))[:32]   # on every host: the gather is collective
  if hosts.is_main():
    return grid.save_grid(ctx.path("gvu", "grids", f"step_{step:06d}.png"), images, ncols=8,
                          captions=captions[:32],
                          title=f"GvU step {step}: rollout samples, {g} per prompt, with their "
                                "intrinsic reward r")
  return None


def run(ctx, base_params):
  """Runs (or resumes, or skips when finished) the GvU stage -> (graphdef, policy params).

  One step: rollout -> score -> training_batch (advantages) -> update -> log.
  `step` counts GvU steps; the optimizer runs gvu.mu updates per step, so the
  state's update counter is step x mu."""
  config, c = ctx.config, ctx.config.gvu
  ctx.layout.check_batch("gvu.prompts_per_step x gvu.group_size",
                         c.prompts_per_step * c.group_size)   # the rollout's rows
  prompts = prompt_stream(ctx)   # (these two checks before anything is written)
  graphdef, roles, (tx, schedule), state, frozen, store = _setup(ctx, base_params)
  if hosts.is_main():
    provenance.record_stage(config, ctx.path("gvu"), "gvu")
  latest = store.latest_step()
  if latest is not None:
    state, meta = store.restore(latest, state)
    # (checkpoints written before the stream's state was saved hold only the step)
    prompts.set_state(meta["data"] if "data" in meta else prompts.position(latest))
    print(f"gvu: resuming from step {latest}" if latest < c.steps else
          f"gvu: found a finished run at step {latest}; skipping")
  fns = step_functions(ctx, graphdef, roles, tx, schedule, state)
  base_key = jax.random.wrap_key_data(np.asarray(state["rng"]))   # state is donated
  start = int(state["step"]) // c.mu
  writer = metrics.stage_writer(config, ctx.workdir, "gvu", resume_step=start)
  if start < c.steps:
    metrics.status("gvu: compiling the rollout and the update")
    fns.update = compile_ahead(ctx, fns.sample, fns.update, state, frozen, roles)
  bar = metrics.progress(c.steps, "gvu", initial=start)
  trace = profiling.StepTrace(config.profile.steps if "profile" in config else (),
                              ctx.path("profile"))
  nonfinite_in_a_row, skipped = 0, 0   # (skipped updates of this process)
  for step in range(start + 1, c.steps + 1):
    trace.before(step)
    texts = [p.text for p in next(prompts)]
    # One key for the global batch, the same on every host (a jitted function's
    # arguments must be); rows draw distinct numbers by their place in it.
    key = jax.random.fold_in(jax.random.fold_in(base_key, step - 1), 0)   # stream 0: rollout
    r = rollout(ctx, fns, roles.policy(state["trainable"], frozen), texts, key)
    faults.inject("rollout", step)
    s = score(ctx, fns, state, frozen, r, key)
    tic = time.perf_counter()
    batch = training_batch(ctx, fns, state, frozen, r, s, step)
    state, m, skips = update(fns, state, frozen, batch, c.mu)
    seconds = {**r.seconds, **s.seconds, "update": time.perf_counter() - tic}
    faults.inject("update", step)
    skipped += skips
    nonfinite_in_a_row = nonfinite_in_a_row + 1 if m["skipped"] else 0
    trace.after(step, state)
    bar.update(1)
    if step % c.log_every == 0 or step == c.steps or m["skipped"]:
      m = step_metrics(m, r, s, c.group_size, seconds)
      writer.write(step, m)
      bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl']:.4f}",
                      img_s=f"{m['images_per_s']:.0f}")
    if c.grid_every and step % c.grid_every == 0 and r.pixels.ndim == 4:   # not token space
      writer.image(step, "samples", save_grid(ctx, r, s, step))
    if nonfinite_in_a_row >= c.max_nonfinite_steps:
      bar.close()
      store.close()
      raise NonFiniteError(f"gvu: {nonfinite_in_a_row} non-finite updates in a row at step "
                           f"{step}; stopped, last good checkpoint kept in {ctx.path('gvu')}")
    updates = (step - start) * c.mu   # (of this process)
    if step == c.steps and skipped == updates:   # nothing learned: not a finished run
      bar.close()
      store.close()
      raise NonFiniteError(f"gvu: all {updates} updates of this run were skipped (non-finite "
                           f"loss or gradient); the final checkpoint was not written")
    stop = preemption.stop_requested(step)
    if step % c.checkpoint_every == 0 or step == c.steps or stop:
      store.save(step, state, {"data": prompts.get_state(), "step": step})
    if stop:
      preemption.stop("gvu", step, store, bar)
  trace.close(state)
  bar.close()
  writer.close()
  store.close()
  return graphdef, roles.policy(state["trainable"], frozen)
