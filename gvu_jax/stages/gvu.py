"""The GvU stage: self-supervised RL of the generation branch on the model's own
understanding likelihood (docs/design.md §1-§4), run, resumed and checkpointed.
One step is rl/step.py's gvu_step:

  prompts -> rollout: sample G images each, decode -> score: intrinsic reward
  -> training_batch: group advantages -> update: GRPO, mu inner iterations over
  the same rollout -> log

Nothing here sees the judge, the world's labels or ground-truth renders: the
only signal is the reward the model computes from its own decoded pixels (the
control runs' rewards are rl/controls.py's).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra import checkpoint, grid, hosts, metrics, profiling, provenance, sharding
from gvu_jax.infra.errors import NonFiniteError
from gvu_jax.infra.pixels import to_uint8
from gvu_jax.models import build, lora
from gvu_jax.rl import state as train_state, step as gvu_step
from gvu_jax.stages import context, loop


def _setup(ctx, base_params):
  """Model definition with adapters (if LoRA), roles, optimizer, initial state,
  the frozen weights and the checkpoint store."""
  config, c = ctx.config, ctx.config.gvu
  signature = dict(build.signature(ctx.model), gvu_lora=train_state.lora_overrides(c))
  if not c.lora.enabled and c.full_ft_modules:   # (recorded only when set, as before it existed)
    lora.check_modules(base_params, c.full_ft_modules)   # before anything is written
    signature["gvu_full_ft_modules"] = list(c.full_ft_modules)
  if isinstance(ctx, context.CheckpointRun):   # the base weights: this conversion
    signature["checkpoint"] = os.path.abspath(ctx.checkpoint)
  checkpoint.check_model_config(ctx.path("gvu"), signature)
  frozen = ctx.gvu_reference(base_params)
  graphdef, roles, optimizer, state = train_state.init(c, ctx.model, frozen, config.seed)
  state, frozen = ctx.layout.put_params(state), ctx.layout.put_params(frozen)
  store = checkpoint.CheckpointStore(ctx.path("gvu", "checkpoints"), c.keep)
  return graphdef, roles, optimizer, state, frozen, store


def load(ctx, base_params):
  """The latest GvU policy in the workdir -> (graphdef, params), or None."""
  if not hosts.agreed("gvu checkpoints", lambda: os.path.exists(ctx.path("gvu", "checkpoints"))):
    return None
  graphdef, roles, _, state, frozen, store = _setup(ctx, base_params)
  state, _, latest = loop.resume(store, state)
  store.close()
  return None if latest is None else (graphdef, roles.policy(state["trainable"], frozen))


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


def step_functions(ctx, graphdef, roles, tx, schedule, state):
  """rl/step.py's jitted pieces for this run."""
  return gvu_step.make(graphdef, roles, tx, schedule, state, c=ctx.config.gvu,
                       reward=ctx.config.reward, model=ctx.model, templates=ctx.templates,
                       image_tokenizer=ctx.image_tokenizer, reward_weights=ctx.reward_weights,
                       layout=ctx.layout)


def save_grid(ctx, r, s, step):
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
  prompts = ctx.gvu_prompts()   # (these two checks before anything is written)
  graphdef, roles, (tx, schedule), state, frozen, store = _setup(ctx, base_params)
  if hosts.is_main():
    provenance.record_stage(config, ctx.path("gvu"), "gvu", ctx.source)
  state, meta, latest = loop.resume(store, state)
  if latest is not None:
    # (checkpoints written before the stream's state was saved hold only the step)
    prompts.set_state(meta["data"] if "data" in meta else prompts.position(latest))
    print(f"gvu: resuming from step {latest}" if latest < c.steps else
          f"gvu: found a finished run at step {latest}; skipping")
  fns = step_functions(ctx, graphdef, roles, tx, schedule, state)
  base_key = jax.random.wrap_key_data(np.asarray(state["rng"]))   # state is donated
  start = int(state["step"]) // c.mu
  if start < c.steps:
    metrics.status("gvu: compiling the rollout and the update")
    fns.update = compile_ahead(ctx, fns.sample, fns.update, state, frozen, roles)
  steps = loop.StageLoop("gvu", config, ctx.workdir, store, start, c.steps, c.checkpoint_every)
  trace = profiling.StepTrace(config.profile.steps if "profile" in config else (),
                              ctx.path("profile"))
  nonfinite_in_a_row, skipped = 0, 0   # (skipped updates of this process)
  for step in range(start + 1, c.steps + 1):
    trace.before(step)
    texts = [p.text for p in next(prompts)]
    state, m, r, s, seconds, skips = gvu_step.gvu_step(
        fns, state, frozen, roles, texts, gvu_step.step_key(base_key, step), step, c.mu)
    skipped += skips
    nonfinite_in_a_row = nonfinite_in_a_row + 1 if m["skipped"] else 0
    trace.after(step, state)
    steps.bar.update(1)
    if step % c.log_every == 0 or step == c.steps or m["skipped"]:
      m = gvu_step.step_metrics(m, r, s, c.group_size, seconds)
      steps.writer.write(step, m)
      steps.bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl']:.4f}",
                            img_s=f"{m['images_per_s']:.0f}")
    if c.grid_every and step % c.grid_every == 0 and r.pixels.ndim == 4:   # not token space
      steps.writer.image(step, "samples", save_grid(ctx, r, s, step))
    if nonfinite_in_a_row >= c.max_nonfinite_steps:
      steps.fail(NonFiniteError(
          f"gvu: {nonfinite_in_a_row} non-finite updates in a row at step {step}; stopped, "
          f"last good checkpoint kept in {ctx.path('gvu')}"))
    updates = (step - start) * c.mu   # (of this process)
    if step == c.steps and skipped == updates:   # nothing learned: not a finished run
      steps.fail(NonFiniteError(
          f"gvu: all {updates} updates of this run were skipped (non-finite loss or "
          "gradient); the final checkpoint was not written"))
    steps.end_step(step, state, {"data": prompts.get_state(), "step": step})
  trace.close(state)
  steps.close()
  return graphdef, roles.policy(state["trainable"], frozen)
