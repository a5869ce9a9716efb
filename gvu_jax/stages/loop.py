"""What pretraining and GvU both do around their steps: resume from the stage's
latest checkpoint, a progress bar and a metric writer from the resumed step, a
checkpoint every `checkpoint_every` steps and at the last, and preemption (after
the step in flight: checkpoint, then exit 0; docs/reliability.md)."""

from gvu_jax.infra import metrics, preemption


def resume(store, state):
  """-> (state, its metadata, its step) from the store's latest checkpoint, or
  (state, {}, None) when it holds none."""
  latest = store.latest_step()
  if latest is None:
    return state, {}, None
  state, meta = store.restore(latest, state)
  return state, meta, latest


class StageLoop:
  """The bookkeeping of one stage's steps `start + 1 .. steps`."""

  def __init__(self, stage, config, workdir, store, start, steps, checkpoint_every):
    self.stage, self.store, self.steps = stage, store, steps
    self.checkpoint_every = checkpoint_every
    self.writer = metrics.stage_writer(config, workdir, stage, resume_step=start)
    self.bar = metrics.progress(steps, stage, initial=start)

  def end_step(self, step, state, meta):
    """After `step`: its checkpoint when one is due (every checkpoint_every, the
    last step, a stop requested), then the stop if one was."""
    stop = preemption.stop_requested(step)
    if step % self.checkpoint_every == 0 or step == self.steps or stop:
      self.store.save(step, state, meta)
    if stop:
      preemption.stop(self.stage, step, self.store, self.bar)

  def fail(self, error):
    """Ends the loop with `error`, the last good checkpoint kept."""
    self.bar.close()
    self.store.close()
    raise error

  def close(self):
    self.bar.close()
    self.writer.close()
    self.store.close()
