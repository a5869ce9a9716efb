"""Supervised pretraining from scratch on the embedded world: text->image
(teacher-forced image tokens) and image->text (captioning) in every batch."""

import os
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gvu_jax.data import batches
from gvu_jax.infra import checkpoint, faults, hosts, metrics, provenance
from gvu_jax.infra.errors import InputError
from gvu_jax.models import build
from gvu_jax.models.umm import image_logits
from gvu_jax.rl import grpo, optimizer
from gvu_jax.rl.reward import answer_token_logprobs
from gvu_jax.stages import loop


def make_train_step(graphdef, image_tokenizer, tx, schedule, answer_start, layout=None,
                    state=None, near_miss_ranking=0.0):
  """Pure (state, batch) -> (state, metrics), jit-compiled, state donated (and kept
  in its shardings, given a sharding.Layout). metrics["lr"]: what the update applied.
  A batch with `near_miss_codes` adds near_miss_ranking x the captioning ranking loss."""

  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    logits = image_logits(model, batch["prompt_ids"], batch["prompt_valid"], batch["codes"])
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits, batch["codes"]).mean()
    ranked = "near_miss_codes" in batch
    codes = batch["caption_codes"]
    # With the ranking loss, the caption is also scored on a near miss's render, in
    # the same pass: the understanding batch is [exact pairs; near-miss pairs].
    both = (lambda x: jnp.concatenate([x, x])) if ranked else (lambda x: x)
    if ranked:
      codes = jnp.concatenate([codes, batch["near_miss_codes"]])
    pixels = image_tokenizer.decode(codes, model)   # as the reward sees them
    token_logp = answer_token_logprobs(model, both(batch["query_ids"]),
                                       both(batch["query_valid"]), both(batch["image_slots"]),
                                       pixels, both(batch["caption_mask"]), answer_start)
    n = batch["caption_codes"].shape[0]
    i2t = -token_logp[:n].sum() / batch["caption_mask"].sum()
    aux = {"t2i_loss": t2i, "i2t_loss": i2t}
    loss = t2i + i2t
    if ranked:
      # Bradley-Terry on the caption's log-likelihood: its own image above the
      # near miss's render (docs/design.md §7), what the reward must tell apart.
      margin = token_logp[:n].sum(-1) - token_logp[n:].sum(-1)
      valid = batch["near_miss_valid"].astype(jnp.float32)
      count = jnp.maximum(valid.sum(), 1.0)
      aux["ranking_loss"] = (jax.nn.softplus(-margin) * valid).sum() / count
      aux["ranking_accuracy"] = ((margin > 0) * valid).sum() / count
      loss += near_miss_ranking * aux["ranking_loss"]
    return loss, aux

  def step(state, batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1},
            dict(aux, loss=loss, grad_norm=optax.tree.norm(grads),
                 lr=optimizer.learning_rate(schedule, state["opt_state"])))

  return jax.jit(step, donate_argnums=0, out_shardings=grpo.state_out_shardings(layout, state))


def checkpoint_signature(model_cfg, pretrain_cfg):
  """What a pretraining checkpoint must match: the model, the text->image data its
  weights were fitted to and the captioning ranking loss's weight (each recorded
  only when not 0, so checkpoints written before the key existed still match)."""
  signature = build.signature(model_cfg)
  if pretrain_cfg.t2i_mislabel:
    signature["pretrain_t2i_mislabel"] = pretrain_cfg.t2i_mislabel
  if pretrain_cfg.get("near_miss_ranking"):
    signature["pretrain_near_miss_ranking"] = pretrain_cfg.near_miss_ranking
  return signature


def _setup(ctx):
  config, c = ctx.config, ctx.config.pretrain
  checkpoint.check_model_config(ctx.path("pretrain"), checkpoint_signature(ctx.model, c))
  graphdef, params = build.create(ctx.model, config.seed)
  tx, schedule = optimizer.make_optimizer(c, c.steps)   # one update a step
  state = ctx.layout.put_params(
      {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)})
  store = checkpoint.CheckpointStore(ctx.path("pretrain", "checkpoints"), c.keep)
  return graphdef, (tx, schedule), state, store


def load(ctx):
  """The finished pretraining checkpoint in the workdir -> (graphdef, params)."""
  latest = store = None
  if hosts.agreed("pretrain checkpoints",   # (nothing is created otherwise)
                  lambda: os.path.isdir(ctx.path("pretrain", "checkpoints"))):
    graphdef, _, state, store = _setup(ctx)
    latest = store.latest_step()
  if latest is None or latest < ctx.config.pretrain.steps:
    if store is not None:
      store.close()
    raise InputError(f"{ctx.path('pretrain')}: no finished pretraining checkpoint "
                     f"(found step {latest}, need {ctx.config.pretrain.steps}); run "
                     "--config.mode=pretrain or all first")
  state, _ = store.restore(latest, state)
  store.close()
  return graphdef, state["params"]


def run(ctx):
  """Pretrains (or resumes, or skips when finished) and returns (graphdef, params)."""
  config, c = ctx.config, ctx.config.pretrain
  directory = ctx.path("pretrain")
  ctx.layout.check_batch("pretrain.batch_size", c.batch_size)   # before anything is written
  graphdef, (tx, schedule), state, store = _setup(ctx)
  if hosts.is_main():
    provenance.record_stage(config, directory, "pretrain")
    ctx.tokenizer.save(ctx.path("pretrain", "tokenizer.json"))
  state, _, latest = loop.resume(store, state)
  if latest is not None:
    if latest >= c.steps:
      print(f"pretrain: found a finished checkpoint at step {latest} in {directory}; skipping")
      store.close()
      return graphdef, state["params"]
    print(f"pretrain: resuming from step {latest}")

  answer_start = ctx.templates.understanding(["a photo of a circle"]).answer_start
  ranking = c.get("near_miss_ranking", 0.0)   # a config written before the key: off
  train_step = make_train_step(graphdef, ctx.image_tokenizer, tx, schedule, answer_start,
                               layout=ctx.layout, state=state,
                               near_miss_ranking=ranking)
  start = int(state["step"])
  steps = loop.StageLoop("pretrain", config, ctx.workdir, store, start, c.steps,
                         c.checkpoint_every)
  tic, seen = time.perf_counter(), 0
  def make_batch(step):   # (on the prefetch thread)
    faults.inject("pretrain_batch", step)
    return ctx.layout.put_batch(batches.supervised_batch(
        ctx.templates, ctx.pretrain_specs, c.batch_size,
        batches.rng_for(config.seed, "pretrain", step), c.cond_dropout,
        c.t2i_mislabel, near_miss_images=ranking > 0))

  previous = None
  for step, batch in zip(range(start, c.steps),
                         batches.prefetch(make_batch, range(start, c.steps))):
    state, m = train_step(state, batch)
    # At most two steps in flight: XLA:CPU launches programs on a few threads, and
    # with many collective programs queued on several processes those threads
    # starve the programs they wait for (docs/reliability.md, "Several hosts").
    jax.block_until_ready(previous)
    previous = m
    seen += c.batch_size
    steps.bar.update(1)
    done = step + 1
    if done % c.log_every == 0 or done == c.steps:
      m = metrics.to_python(m)
      m["examples_per_s"] = seen / (time.perf_counter() - tic)
      tic, seen = time.perf_counter(), 0
      steps.bar.set_postfix(loss=f"{m['loss']:.3f}", t2i=f"{m['t2i_loss']:.3f}",
                            i2t=f"{m['i2t_loss']:.3f}",
                            **({"rank": f"{m['ranking_accuracy']:.2f}"} if "ranking_accuracy"
                               in m else {}), ex_s=f"{m['examples_per_s']:.0f}")
      steps.writer.write(done, m)
    steps.end_step(done, state, {"data_position": done})
  steps.close()
  return graphdef, state["params"]
