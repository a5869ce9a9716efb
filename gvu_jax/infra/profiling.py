"""A jax.profiler trace of chosen GvU steps (config.profile.steps = (START, END))
into WORKDIR/profile, which TensorBoard's profile plugin and XProf read."""

import jax


class StepTrace:
  """Call `before(step)` and `after(step, state)` around each step; `close()` at
  the end. A run resumed past START traces from its first step up to END."""

  def __init__(self, steps, directory):
    self.start, self.end = tuple(steps) if steps else (0, -1)
    self.directory, self.active = directory, False

  def before(self, step):
    if not self.active and self.start <= step <= self.end:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step, state):
    if self.active and step >= self.end:
      self.close(state)

  def close(self, state=None):
    if self.active:
      jax.block_until_ready(state)   # the traced steps' device work, finished
      jax.profiler.stop_trace()
      self.active = False
