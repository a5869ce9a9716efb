"""Progress (gvu_jax/metrics.py): plain lines off a terminal, a bar on one, and a
rate and time left that never count the first update's compilation."""

import io

import pytest

from gvu_jax import metrics


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def clock(monkeypatch):
  c = Clock()
  monkeypatch.setattr(metrics.time, "perf_counter", c)
  return c


@pytest.mark.parametrize("compile_s, step_s, total", [(100.0, 2.0, 5), (0.5, 10.0, 4),
                                                      (600.0, 0.25, 3)])
def test_plain_lines_measure_the_steps_after_compilation(clock, compile_s, step_s, total):
  out = io.StringIO()
  bar = metrics.Progress(total, "gvu", every_s=0.0, stream=out)
  clock.now += compile_s
  bar.update(1)
  for _ in range(total - 1):
    clock.now += step_s
    bar.set_postfix(reward="0.500")
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  assert lines[0] == f"gvu: 0/{total} (0%), compiling"
  assert lines[1] == f"gvu: 1/{total} ({100 // total}%)"   # no rate yet: only compilation seen
  left = metrics._duration(step_s * (total - 2))
  assert lines[2] == (f"gvu: 2/{total} ({200 // total}%), {step_s:.3g} s each, {left} left, "
                      "reward=0.500")
  assert lines[-1].startswith(f"gvu: {total}/{total} (100%), {step_s:.3g} s each, 0s left")
  assert len(lines) == total + 1   # close() does not repeat the last line


def test_plain_lines_come_every_so_often_and_at_the_end(clock):
  out = io.StringIO()
  bar = metrics.Progress(100, "pretrain", every_s=30.0, stream=out)
  for _ in range(100):
    clock.now += 1.0
    bar.update(1)
  bar.close()
  counts = [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()[1:]]
  assert counts == [1, 31, 61, 91, 100]


def test_a_resumed_run_starts_its_clock_at_its_first_step(clock):
  out = io.StringIO()
  bar = metrics.Progress(10, "gvu", initial=6, every_s=0.0, stream=out)
  clock.now += 50.0
  bar.update(1)
  clock.now += 3.0
  bar.update(1)
  assert out.getvalue().splitlines()[-1] == "gvu: 8/10 (80%), 3 s each, 6s left"
  finished = metrics.Progress(10, "gvu", initial=10, stream=io.StringIO())
  assert finished.stream.getvalue() == ""   # nothing to do, nothing said


def test_a_terminal_gets_a_bar_whose_rate_skips_compilation(clock):
  out = Terminal()
  bar = metrics.Progress(4, "gvu", stream=out)
  assert bar.tty and "compiling" in out.getvalue()
  bar.update(1)
  assert (bar.bar.initial, bar.bar.n) == (1, 1)   # tqdm measures from here
  bar.update(1)
  bar.close()
  assert "compiling" not in out.getvalue().split("\r")[-1]


@pytest.mark.parametrize("steps, run, traced", [
    ((2, 3), range(1, 6), True),    # a run through START..END
    ((2, 3), range(4, 6), False),   # resumed after END: nothing to trace
    ((2, 9), range(4, 6), True),    # resumed inside the range, stopped at the run's end
    ((), range(1, 4), False),       # off
])
def test_a_step_trace_appears_only_for_the_chosen_steps(tmp_path, steps, run, traced):
  import jax
  import jax.numpy as jnp
  from gvu_jax import profiling
  trace = profiling.StepTrace(steps, str(tmp_path / "profile"))
  state = jnp.ones(4)
  active = []
  for step in run:
    trace.before(step)
    active.append(trace.active)
    state = jax.jit(lambda x: x * 2)(state)
    trace.after(step, state)
  trace.close(state)
  assert not trace.active
  assert active == [bool(steps) and steps[0] <= s <= steps[1] for s in run]
  found = sorted(p.name for p in tmp_path.rglob("*.xplane.pb"))
  assert bool(found) == traced
