"""Metrics as JSON lines and progress; only host 0 writes or prints."""

import json
import os
import sys
import time

import jax
import numpy as np
import tqdm

from gvu_jax import files


def is_main_host():
  return jax.process_index() == 0


def to_python(metrics):
  return {k: (v if isinstance(v, str) else float(np.asarray(v))) for k, v in metrics.items()}


class MetricsWriter:
  """Appends {"step": s, ...} lines to `path`. A run resumed from step
  `resume_step` first cuts the file back to the whole lines of steps up to it,
  so a crash's cut line or the steps after the checkpoint are not repeated."""

  def __init__(self, path, resume_step=0):
    self.path = path
    if is_main_host():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      files.read_jsonl(path, keep=lambda r: r.get("step", 0) <= resume_step)

  def write(self, step, metrics):
    if is_main_host():
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **to_python(metrics)}) + "\n")


def _duration(seconds):
  seconds = int(round(seconds))
  return (f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else
          f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


class Progress:
  """A bar on a terminal; plain lines elsewhere (a log file gets a line every
  `every_s` seconds, never carriage-return frames). The first update pays for
  compilation: until it the progress says "compiling", and the rate and the
  time left are measured from it, so they never count compilation."""

  def __init__(self, total, desc, initial=0, every_s=30.0, stream=None):
    self.total, self.desc, self.n, self.every_s = total, desc, initial, every_s
    self.stream = stream or sys.stderr
    self.enabled = is_main_host()
    self.tty = self.enabled and self.stream.isatty()
    self.postfix, self.clock = {}, None
    self.last_line, self.last_n = time.perf_counter(), None
    if self.tty:
      self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                           mininterval=1.0, smoothing=0, file=self.stream)
      if initial < total:
        self.bar.set_postfix_str("compiling")
    elif self.enabled and initial < total:
      self._line("compiling")

  def update(self, n=1):
    self.n += n
    if not self.enabled:
      return
    first = self.clock is None
    if first:   # compiled: the clock starts here
      self.clock = (time.perf_counter(), self.n)
    if self.tty:
      self.bar.update(n)
      if first:
        self.bar.set_postfix_str("")
        self.bar.start_t, self.bar.initial = self.bar._time(), self.bar.n
    elif first or self.n >= self.total or time.perf_counter() - self.last_line >= self.every_s:
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
  """One line saying what the run is doing now (host 0), e.g. before a silent phase."""
  if is_main_host():
    print(message, file=sys.stderr, flush=True)
