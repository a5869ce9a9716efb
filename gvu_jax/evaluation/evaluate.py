"""Held-out evaluation of one model (a stage of the run).

generation:    images the model samples for held-out prompts, scored by the
               exact pixel judge (GenEval rules), per category.
understanding: does the model's likelihood of each held-out prompt pick its
               ground-truth render among K renders the judge rejects for it?
intrinsic_reward: the mean GvU reward the model gives its own held-out images.
reward_ranking: how often that reward prefers a render of a held-out prompt to a
               render of its near miss: the understanding branch as GvU's judge.
"""

import jax
import numpy as np
from flax import nnx

from gvu_jax import world
from gvu_jax.data import batches
from gvu_jax.infra import grid, hosts, metrics, preemption
from gvu_jax.infra.sharding import to_host
from gvu_jax.rl import reward as reward_lib
from gvu_jax.rl.sampling import Sampler, SamplingConfig, row_keys
from gvu_jax.world import judge


STAGE_TITLES = {"pretrained": "Before GvU (pretrained)", "gvu": "After GvU"}


def padded_chunks(n, size):
  """Index arrays of exactly `size` covering range(n), the last one padded by
  repeating its first index; yields (indices, number of real entries). Every
  evaluation batch comes from here: after each, a preemption signal stops the run."""
  for start in range(0, n, size):
    if start:
      hosts.alive(f"evaluation batch {start // size}")
      preemption.stop_evaluation("eval")
    idx = np.arange(start, min(start + size, n))
    yield np.concatenate([idx, np.full(size - len(idx), idx[0])]), len(idx)


def make_scorer(ctx, graphdef):
  """Jitted (params, codes, query) -> (summed log-likelihood, reward) per row, and
  what the understanding branch read (the decoded pixels, or the tokens), so a
  caller that keeps the images does not decode twice."""
  r = ctx.config.reward

  def score(params, codes, query):
    model = nnx.merge(graphdef, params)
    pixels = ctx.image_tokenizer.decode(codes, model)
    rewards, token_logp = reward_lib.intrinsic_reward(model, pixels, query, r.aggregation,
                                                      ctx.reward_weights, r.quantize_pixels)
    return token_logp.sum(-1), rewards, pixels

  return jax.jit(score)


def balanced_prompts(specs, per_category):
  """`per_category` prompts for every category, cycling through its held-out
  prompts, so every category is measured with the same precision however few
  held-out prompts it has."""
  out = []
  for category in world.CATEGORIES:
    mine = [s for s in specs if s.category == category]
    out += [mine[i % len(mine)] for i in range(per_category)] if mine else []
  return out


def generation(ctx, graphdef, params, scorer, prompts=None):
  """Judged generation on `prompts` (default: the held-out prompts)."""
  c = ctx.config.eval
  specs = balanced_prompts(prompts or ctx.heldout_specs, c.images_per_category)
  sampler = Sampler(graphdef, SamplingConfig(**c.sampling),
                    num_tokens=ctx.model.image_tokens,
                    uncond_row=ctx.templates.unconditional(1), layout=ctx.layout)
  put = ctx.layout.put_batch
  key = jax.random.key(ctx.config.seed)
  codes, rewards = [], []
  for idx, real in padded_chunks(len(specs), c.batch_size):
    texts = [specs[j].text for j in idx]
    ids, valid = put(ctx.templates.generation(texts))
    out = sampler(params, ids, valid, put(row_keys(key, idx)))   # a key per prompt
    _, r, _ = scorer(params, out.codes, put(ctx.templates.understanding(texts).arrays()))
    codes.append(to_host(out.codes)[:real])
    rewards.append(to_host(r)[:real])
  images = world.codes_to_image(np.concatenate(codes))
  correct = judge.judge_batch(images, specs)
  return images, specs, correct, float(np.concatenate(rewards).mean())


def score_rows(ctx, params, scorer, codes, texts):
  """Each image (its codes) with its text as the answer -> the summed answer
  log-likelihood and the intrinsic reward per row, in eval-sized batches."""
  codes = np.stack(codes).astype(np.int32)
  totals, rewards = np.zeros(len(texts)), np.zeros(len(texts))
  for idx, real in padded_chunks(len(texts), ctx.config.eval.batch_size):
    query = ctx.templates.understanding([texts[j] for j in idx]).arrays()
    total, r, _ = scorer(params, *ctx.layout.put_batch((codes[idx], query)))
    totals[idx[:real]], rewards[idx[:real]] = to_host(total)[:real], to_host(r)[:real]
  return totals, rewards


def understanding(ctx, params, scorer):
  """Per category, how often the model picks the image a held-out prompt describes:
  the prompt's log-likelihood on a ground-truth render must beat its likelihood on
  K = eval.num_distractors renders the judge rejects for it (scenes of its
  distractor prompts, near misses first, cycled when there are fewer than K). The
  text is the same for all K + 1, so the caption prior cannot win: only reading
  the image can. 1 = always right, 1 / (K + 1) = chance; a tie at the top is shared
  (scores within float32 rounding, 1e-6 relative, are a tie, as in reward_ranking)."""
  c = ctx.config.eval
  specs = balanced_prompts(ctx.heldout_specs, c.images_per_category)
  codes = []
  for i, spec in enumerate(specs):
    rng = batches.rng_for(ctx.config.seed, "eval", i)
    scene = world.sample_scene(spec, rng)
    wrong_prompts = world.distractors(spec, world.render(scene), c.num_distractors, rng)
    codes.append(world.scene_to_codes(scene))
    codes += [world.scene_to_codes(world.rejected_scene(wrong_prompts[k % len(wrong_prompts)],
                                                  spec, rng))
              for k in range(c.num_distractors)]
  options = c.num_distractors + 1
  scores, _ = score_rows(ctx, params, scorer, codes, [s.text for s in specs for _ in
                                                      range(options)])
  scores = scores.reshape(len(specs), options)   # column 0: the true render
  best = scores.max(-1, keepdims=True)
  at_top = (scores == best) | (np.abs(scores - best) <= 1e-6 * np.abs(best))
  credit = np.where(at_top[:, 0], 1.0 / at_top.sum(-1), 0.0)
  return list(credit), specs


def reward_ranking(ctx, params, scorer, prompts):
  """Per category, how often the intrinsic reward of a prompt is higher on a render
  that satisfies it than on a render of its near miss (world.near_miss), which the
  judge rejects: 1 = always, 0.5 = chance (ties count half). Both are ground-truth
  renders, so this measures the reward signal GvU gets, apart from generation.
  Rewards within float32 rounding of each other (1e-6 relative) are a tie: a tie
  must not turn into a preference with the summation order of another mesh."""
  specs = balanced_prompts(prompts, ctx.config.eval.images_per_category)
  codes = []
  for i, spec in enumerate(specs):
    rng = batches.rng_for(ctx.config.seed, "reward_ranking", i)
    wrong = world.sample_scene(world.near_miss(spec, rng), rng)
    codes += [world.scene_to_codes(world.sample_scene(spec, rng)), world.scene_to_codes(wrong)]
  _, rewards = score_rows(ctx, params, scorer, codes, [s.text for s in specs for _ in range(2)])
  right, wrong = rewards[0::2], rewards[1::2]
  tie = np.abs(right - wrong) <= 1e-6 * np.maximum(np.abs(right), np.abs(wrong))
  return judge.category_accuracy(list(np.where(tie, 0.5, (right > wrong) * 1.0)), specs)


def run(ctx, graphdef, params, stage):
  ctx.layout.check_batch("eval.batch_size", ctx.config.eval.batch_size)
  scorer = make_scorer(ctx, graphdef)
  own_prompts = not set(ctx.gvu_specs) & set(ctx.pretrain_specs)
  # phases: generation, understanding, reward ranking (+ both on the GvU prompts)
  bar = metrics.Progress(5 if own_prompts else 3, f"eval {stage}", every_s=0.0)
  images, row_specs, gen_correct, mean_reward = generation(ctx, graphdef, params, scorer)
  bar.update(1)
  und_correct, und_specs = understanding(ctx, params, scorer)
  bar.update(1)
  # The grid: the first few images of every category, one category per row.
  per_row, ipc = 8, ctx.config.eval.images_per_category
  shown = [k * ipc + j for k in range(len(row_specs) // ipc) for j in range(min(per_row, ipc))]
  if hosts.is_main():
    grid.save_grid(ctx.path("grids", f"{stage}.png"), images[shown], ncols=min(per_row, ipc),
                   captions=[row_specs[i].text for i in shown],
                   marks=[gen_correct[i] for i in shown],
                   title=f"{STAGE_TITLES.get(stage, stage)}: held-out prompts (seed "
                         f"{ctx.config.seed}), generation accuracy "
                         f"{np.mean(gen_correct):.0%}",
                   row_labels=[row_specs[k * ipc].category.replace("_", " ")
                               for k in range(len(row_specs) // ipc)])
  out = {"generation": judge.category_accuracy(list(gen_correct), row_specs),
         "understanding": judge.category_accuracy(und_correct, und_specs),
         "intrinsic_reward": mean_reward,
         "reward_ranking": reward_ranking(ctx, params, scorer, ctx.heldout_specs)}
  bar.update(1)
  if own_prompts:
    # The GvU stage's own prompts, never paired with an image: how far the
    # intrinsic reward moved generation where it trained (not held out from GvU).
    _, specs, correct, _ = generation(ctx, graphdef, params, scorer, ctx.gvu_specs)
    out["generation_gvu_prompts"] = judge.category_accuracy(list(correct), specs)
    bar.update(1)
    out["reward_ranking_gvu_prompts"] = reward_ranking(ctx, params, scorer, ctx.gvu_specs)
    bar.update(1)
  bar.close()
  return out
