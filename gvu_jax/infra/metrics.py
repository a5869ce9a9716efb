"""Metrics as JSON lines and progress; only host 0 writes or prints."""

import json
import os
import secrets
import sys
import time

import numpy as np
import tqdm

from gvu_jax.infra import files, hosts
from gvu_jax.infra.errors import InputError


def to_python(metrics):
  return {k: (v if isinstance(v, str) else float(np.asarray(v))) for k, v in metrics.items()}


class MetricsWriter:
  """One stage's metrics and pictures, to every back end the config chooses (host
  0 only; tags "<stage>/<name>"):

    JSON lines in `path`, always: {"step": s, ...} a line;
    TensorBoard event files in `tensorboard_dir` (tensorboardX writes them without
      TensorFlow: `tensorboard --logdir WORKDIR/tensorboard`);
    Weights & Biases, when `wandb` (a WandbRun) is given.

  A run resumed from step `resume_step` first cuts the JSONL back to the whole
  lines of steps up to it (a crash's cut line and the steps after the checkpoint
  are not repeated), and tells TensorBoard to drop what was logged after it."""

  def __init__(self, path, resume_step=0, stage=None, tensorboard_dir=None, wandb=None):
    self.path = path
    self.stage = stage or os.path.basename(os.path.dirname(path))
    self.tensorboard = self.wandb = None
    if hosts.is_main():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      files.read_jsonl(path, keep=lambda r: r.get("step", 0) <= resume_step)
      if tensorboard_dir:
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(tensorboard_dir, flush_secs=30,
                                         purge_step=resume_step + 1 if resume_step else None)
      self.wandb = wandb

  def write(self, step, metrics):
    if not hosts.is_main():
      return
    values = to_python(metrics)
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    numbers = {k: v for k, v in values.items() if not isinstance(v, str)}
    if self.tensorboard:
      for key, value in numbers.items():
        self.tensorboard.add_scalar(f"{self.stage}/{key}", value, int(step))
    if self.wandb:
      self.wandb.log(self.stage, step, numbers)

  def image(self, step, name, image):
    """A uint8 [H, W, 3] picture (a grid, a plot) under "<stage>/<name>"."""
    if not hosts.is_main():
      return
    if self.tensorboard:
      self.tensorboard.add_image(f"{self.stage}/{name}", np.asarray(image, np.uint8),
                                 int(step), dataformats="HWC")
    if self.wandb:
      self.wandb.image(self.stage, step, name, image)

  def close(self):
    """Flushes the event file (tensorboardX also flushes every 30 s on its own)."""
    if self.tensorboard:
      self.tensorboard.close()


class WandbRun:
  """The workdir's one W&B run (its id kept in WORKDIR/wandb_run_id, so a resumed
  run continues it); each stage's metrics are plotted against its own step
  ("<stage>/step"). WANDB_MODE=offline and the other W&B variables apply."""

  def __init__(self, project, entity, workdir, config):
    try:
      import wandb
    except ImportError:
      raise InputError(f"logging.wandb_project={project}: wandb is not installed "
                       "(pip install 'gvu_jax[wandb]')") from None
    self.wandb, self.stages = wandb, set()
    id_file = os.path.join(workdir, "wandb_run_id")
    run_id = open(id_file).read().strip() if os.path.exists(id_file) else None
    if not run_id:
      run_id = secrets.token_hex(6)   # W&B run ids: lowercase letters and digits
      files.write_atomic(id_file, run_id)
    self.run = wandb.init(project=project, entity=entity or None, dir=workdir, id=run_id,
                          resume="allow", name=os.path.basename(os.path.abspath(workdir)),
                          config=config)

  def _stage(self, stage):
    if stage not in self.stages:
      self.run.define_metric(f"{stage}/step")
      self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
      self.stages.add(stage)

  def log(self, stage, step, values):
    self._stage(stage)
    self.run.log({f"{stage}/step": int(step), **{f"{stage}/{k}": v for k, v in values.items()}})

  def image(self, stage, step, name, image):
    self._stage(stage)
    self.run.log({f"{stage}/step": int(step),
                  f"{stage}/{name}": self.wandb.Image(np.asarray(image, np.uint8))})


_WANDB_RUNS = {}


def stage_writer(config, workdir, stage, resume_step=0):
  """The MetricsWriter of `stage` (WORKDIR/<stage>/metrics.jsonl) with the back
  ends `config.logging` turns on."""
  log = config.get("logging") or {}
  tensorboard = os.path.join(workdir, "tensorboard", stage) if log.get("tensorboard") else None
  wandb = None
  if log.get("wandb_project") and hosts.is_main():
    key = os.path.abspath(workdir)
    if key not in _WANDB_RUNS:
      _WANDB_RUNS[key] = WandbRun(log.wandb_project, log.get("wandb_entity"), workdir,
                                  config.to_dict())
    wandb = _WANDB_RUNS[key]
  return MetricsWriter(os.path.join(workdir, stage, "metrics.jsonl"), resume_step, stage,
                       tensorboard, wandb)


def _duration(seconds):
  seconds = int(round(seconds))
  return (f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else
          f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


class Progress:
  """A bar on a terminal; plain lines elsewhere (a log file gets a line every
  `every_s` seconds, never carriage-return frames). With `warmup` (default
  "compiling") the first update pays for compilation: until it the progress
  says so, and the rate and the time left are measured from it, so they never
  count compilation; warmup=None measures from the start."""

  def __init__(self, total, desc, initial=0, every_s=30.0, stream=None, warmup="compiling"):
    self.total, self.desc, self.n, self.every_s = total, desc, initial, every_s
    self.stream = stream or sys.stderr
    self.enabled = hosts.is_main()
    self.tty = self.enabled and self.stream.isatty()
    self.postfix, self.clock = {}, None if warmup else (time.perf_counter(), initial)
    self.last_line, self.last_n = time.perf_counter(), None
    if self.tty:
      self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                           mininterval=1.0, smoothing=0, file=self.stream)
      if initial < total and warmup:
        self.bar.set_postfix_str(warmup)
    elif self.enabled and initial < total and warmup:
      self._line(warmup)

  def update(self, n=1):
    self.n += n
    hosts.alive(f"{self.desc} {self.n}/{self.total}")
    if not self.enabled:
      return
    warmed_up = self.clock is None
    if warmed_up:   # (compiled): the clock starts here
      self.clock = (time.perf_counter(), self.n)
    if self.tty:
      self.bar.update(n)
      if warmed_up:
        self.bar.set_postfix_str("")
        self.bar.start_t, self.bar.initial = self.bar._time(), self.bar.n
    elif (warmed_up or self.last_n is None or self.n >= self.total
          or time.perf_counter() - self.last_line >= self.every_s):
      self._line()

  def set_postfix(self, **values):
    self.postfix = values
    if self.tty:
      self.bar.set_postfix(**values)

  def close(self):
    if self.tty:
      self.bar.close()
    elif self.enabled and self.clock and self.last_n != self.n:
      self._line()

  def rate(self):
    """Seconds per update since the first one (None before two updates)."""
    if self.clock is None or self.n == self.clock[1]:
      return None
    return (time.perf_counter() - self.clock[0]) / (self.n - self.clock[1])

  def _line(self, note=""):
    parts = [f"{self.desc}: {self.n}/{self.total} ({100 * self.n // max(self.total, 1)}%)"]
    per = self.rate()
    if per is not None:
      parts.append(f"{per:.3g} s each, {_duration(per * (self.total - self.n))} left")
    parts += [note] if note else []
    parts += [" ".join(f"{k}={v}" for k, v in self.postfix.items())] if self.postfix else []
    print(", ".join(parts), file=self.stream, flush=True)
    self.last_line, self.last_n = time.perf_counter(), self.n


def progress(total, desc, initial=0):
  return Progress(total, desc, initial)


def status(message):
  """One line on stdout saying what the run is doing now (host 0), e.g. before a
  silent phase (stderr stays for progress and, on bad input, the one error line).
  A phase's start is progress for the watchdog."""
  hosts.alive(message)
  if hosts.is_main():
    print(message, flush=True)
