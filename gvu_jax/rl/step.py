"""One GvU step (docs/design.md §4), its parts as functions of explicit arguments:

  rollout: sample G images per prompt, decode -> score: intrinsic reward (or a
  control's) -> training_batch: group advantages, reference log-probs -> update:
  GRPO, mu updates over the same rollout -> step_metrics

`make` builds the jitted pieces once per run; `gvu_step` runs them in order.
Nothing here sees the world's labels: the control runs' rewards come from
controls.py.
"""

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from gvu_jax.infra import faults, metrics, sharding
from gvu_jax.rl import controls, grpo, reward as reward_lib
from gvu_jax.rl.sampling import Sampler, SamplingConfig


@dataclasses.dataclass
class StepFunctions:
  """The jitted pieces of one GvU step, and what they were built for."""
  templates: Any          # the run's text templates (generation and understanding)
  layout: sharding.Layout
  group_size: int
  reward_kind: str        # intrinsic | shuffled | judge (the update's reward)
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
  used: Any               # the rewards the update sees (a control's in a control run)
  seconds: dict


def make_reward_fn(graphdef, roles, r, weights):
  """Jitted (trainable, frozen, pixels, query) -> (reward, token log-likelihoods)
  for the `reward` block `r`, with the policy (default) or the frozen reference
  as the judge; `weights`: the per-token-id table of the `weighted` aggregation."""

  def reward_fn(trainable, frozen, pixels, query):
    params = (roles.policy if r.judge == "policy" else roles.reference)(trainable, frozen)
    return reward_lib.intrinsic_reward(nnx.merge(graphdef, params), pixels, query,
                                       r.aggregation, weights, r.quantize_pixels)

  return jax.jit(reward_fn)


def make(graphdef, roles, tx, schedule, state, *, c, reward, model, templates,
         image_tokenizer, reward_weights, layout):
  """The step's jitted pieces for the `gvu` block `c` and the `reward` block, on
  `model` (its image_tokens) with its templates and image tokenizer, over
  `layout`'s mesh; `state` gives the update's shardings."""
  shared_prompt_group = grpo.shared_prompt_group(c)
  return StepFunctions(
      templates=templates, layout=layout, group_size=c.group_size, reward_kind=reward.kind,
      sample=Sampler(graphdef, SamplingConfig(**c.sampling), num_tokens=model.image_tokens,
                     uncond_row=templates.unconditional(1), group_size=c.group_size,
                     layout=layout),
      decode=jax.jit(lambda params, codes: image_tokenizer.decode(
          codes, nnx.merge(graphdef, params))),
      reward=make_reward_fn(graphdef, roles, reward, reward_weights),
      advantages=jax.jit(functools.partial(grpo.group_advantages, group_size=c.group_size,
                                           scale_by_std=c.scale_advantages_by_std)),
      shuffle=jax.jit(controls.shuffle_within_groups, static_argnums=1),
      logp=grpo.make_logp_fn(graphdef, roles, with_policy=c.mu > 1,
                             shared_prompt_group=shared_prompt_group),
      update=grpo.make_grpo_step(graphdef, roles, tx, clip_eps=c.clip_eps, beta=c.beta,
                                 grad_accum=c.grad_accum, schedule=schedule, layout=layout,
                                 state=state, shared_prompt_group=shared_prompt_group))


def step_key(base_key, step):
  """The rollout's key of GvU step `step` (1-based): one key for the global batch,
  the same on every host (a jitted function's arguments must be); rows draw
  distinct numbers by their place in it."""
  return jax.random.fold_in(jax.random.fold_in(base_key, step - 1), 0)   # stream 0: rollout


def _timed(fn, *args):
  tic = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - tic


def rollout(fns, policy, texts, key) -> Rollout:
  """Samples G images per prompt and decodes them (design.md §4: sample, decode)."""
  prompt = fns.templates.generation(texts)
  ids, valid = fns.layout.put_batch(prompt)
  samples, t_sample = _timed(fns.sample, policy, ids, valid, key)
  pixels, t_decode = _timed(fns.decode, policy, samples.codes)
  return Rollout(texts, prompt, samples, pixels, {"rollout": t_sample, "decode": t_decode})


def score(fns, state, frozen, r: Rollout, key) -> Scored:
  """The intrinsic reward of each image: the likelihood of its prompt under the
  understanding branch (design.md §2); the update sees the control's reward in a
  control run (controls.py): shuffled within groups, or the world's judge."""
  g = fns.group_size
  query = fns.templates.understanding(r.texts).arrays(repeat=g)   # encoded once per prompt
  answer_mask, query = query["answer_mask"], fns.layout.put_batch(query)
  (rewards, token_logp), seconds = _timed(fns.reward, state["trainable"], frozen, r.pixels,
                                          query)
  used = rewards
  if fns.reward_kind == "shuffled":
    used = fns.shuffle(rewards, g, jax.random.fold_in(key, 1))
  if fns.reward_kind == "judge":   # the ceiling: a perfect reward in its place
    used = fns.layout.put_batch(controls.judge_verdicts(r.texts, r.samples.codes, g))
  return Scored(rewards, token_logp, answer_mask, used, {"reward": seconds})


def training_batch(fns, state, frozen, r: Rollout, s: Scored, step):
  """The update's inputs: each prompt repeated per image, the sampled codes, their
  group advantages (design.md §3) and the reference's (and, for mu > 1, the
  sampling policy's) token log-probs."""
  g = fns.group_size
  advantages = faults.poisoned("advantages", step, fns.advantages(s.used))
  batch = fns.layout.put_batch({"prompt_ids": np.repeat(r.prompt[0], g, 0),
                                "prompt_valid": np.repeat(r.prompt[1], g, 0),
                                "codes": r.samples.codes, "advantages": advantages})
  batch.update(fns.layout.put_batch(fns.logp(state["trainable"], frozen, batch)))
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


def gvu_step(fns, state, frozen, roles, texts, key, step, mu):
  """rollout -> score -> training_batch -> update for the prompts `texts` ->
  (state, the update's metrics, rollout, scored, seconds per part, skipped updates)."""
  r = rollout(fns, roles.policy(state["trainable"], frozen), texts, key)
  faults.inject("rollout", step)
  s = score(fns, state, frozen, r, key)
  tic = time.perf_counter()
  batch = training_batch(fns, state, frozen, r, s, step)
  state, m, skips = update(fns, state, frozen, batch, mu)
  seconds = {**r.seconds, **s.seconds, "update": time.perf_counter() - tic}
  faults.inject("update", step)
  return state, m, r, s, seconds, skips


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
