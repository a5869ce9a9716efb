"""Progress (gvu_jax/infra/metrics.py): plain lines off a terminal, a bar on one, and a
rate and time left that never count the first update's compilation."""

import io
import json
import os

import numpy as np
import pytest

from gvu_jax.infra import metrics


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
  assert (bar.bar.initial, bar.bar.n) == (1, 2)   # and only once
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
  from gvu_jax.infra import profiling
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


# --- metric writers ----------------------------------------------------------

from helpers_events import read_events   # noqa: E402


def test_tensorboard_holds_what_the_jsonl_holds_and_the_pictures(tmp_path):
  import json
  writer = metrics.MetricsWriter(str(tmp_path / "gvu" / "metrics.jsonl"), stage="gvu",
                                 tensorboard_dir=str(tmp_path / "tb"))
  rows = {1: {"loss": 0.5, "reward_mean": 0.25, "note": "text stays in the JSONL"},
          2: {"loss": 0.125, "reward_mean": 0.75, "note": "x"}}
  for step, row in rows.items():
    writer.write(step, row)
  picture = np.random.default_rng(0).integers(0, 256, (6, 10, 3)).astype(np.uint8)
  writer.image(2, "samples", picture)
  writer.close()
  scalars, images, _ = read_events(str(tmp_path / "tb"))
  assert scalars == {(f"gvu/{k}", s): v for s, row in rows.items() for k, v in row.items()
                     if k != "note"}
  np.testing.assert_array_equal(images["gvu/samples", 2], picture)
  lines = [json.loads(line) for line in open(tmp_path / "gvu" / "metrics.jsonl")]
  assert lines == [{"step": s, **row} for s, row in rows.items()]


def test_a_resumed_writer_tells_tensorboard_to_drop_the_steps_after_its_checkpoint(tmp_path):
  kw = dict(stage="gvu", tensorboard_dir=str(tmp_path / "tb"))
  first = metrics.MetricsWriter(str(tmp_path / "m.jsonl"), **kw)
  for step in (1, 2, 3):
    first.write(step, {"loss": float(step)})
  first.close()
  again = metrics.MetricsWriter(str(tmp_path / "m.jsonl"), resume_step=2, **kw)
  again.write(3, {"loss": 30.0})
  again.close()
  _, _, starts = read_events(str(tmp_path / "tb"))
  assert starts == [3]   # TensorBoard purges what an earlier file logged from step 3 on
  assert [json.loads(l)["loss"] for l in open(tmp_path / "m.jsonl")] == [1.0, 2.0, 30.0]


class RecordingWandb:
  """Stands in for the wandb module: records what the writer asks of it."""

  def __init__(self):
    self.calls = []
    outer = self

    class Run:
      def define_metric(self, name, **kw):
        outer.calls.append(("define_metric", name, kw))

      def log(self, values):
        outer.calls.append(("log", values))

    self.run = Run()
    self.Image = lambda array: ("Image", array.shape)

  def init(self, **kw):
    self.calls.append(("init", kw))
    return self.run


def test_wandb_gets_each_stage_against_its_own_step(tmp_path, monkeypatch):
  import sys
  fake = RecordingWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  monkeypatch.setattr(metrics.secrets, "token_hex", lambda n: "run123")
  run = metrics.WandbRun("proj", "", str(tmp_path), {"seed": 0})
  writer = metrics.MetricsWriter(str(tmp_path / "gvu" / "m.jsonl"), stage="gvu", wandb=run)
  writer.write(4, {"loss": 0.5})
  writer.image(4, "samples", np.zeros((2, 3, 3), np.uint8))
  (_, init), *rest = fake.calls
  assert init == dict(project="proj", entity=None, dir=str(tmp_path), id="run123",
                      resume="allow", name=tmp_path.name, config={"seed": 0})
  assert rest == [("define_metric", "gvu/step", {}),
                  ("define_metric", "gvu/*", {"step_metric": "gvu/step"}),
                  ("log", {"gvu/step": 4, "gvu/loss": 0.5}),
                  ("log", {"gvu/step": 4, "gvu/samples": ("Image", (2, 3, 3))})]
  metrics.WandbRun("proj", "", str(tmp_path), {})   # a resumed run continues the same W&B run
  assert fake.calls[-1][1]["id"] == "run123" and (tmp_path / "wandb_run_id").read_text() == "run123"


def test_wandb_offline_writes_the_run_and_its_pictures(tmp_path):
  """The real wandb, offline (WANDB_MODE=offline), in a child process."""
  import subprocess
  import sys
  pytest.importorskip("wandb")
  script = ("import numpy as np, ml_collections\n"
            "from gvu_jax.infra import metrics\n"
            "c = ml_collections.ConfigDict({'logging': {'tensorboard': False, "
            "'wandb_project': 'gvu-test', 'wandb_entity': ''}})\n"
            f"w = metrics.stage_writer(c, {str(tmp_path)!r}, 'gvu')\n"
            "w.write(1, {'loss': 0.5}); w.image(1, 'samples', np.zeros((4, 4, 3), np.uint8))\n"
            "metrics._WANDB_RUNS.popitem()[1].run.finish()\n")
  env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
  for _ in range(2):   # the second run resumes the first's id
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
  run_id = (tmp_path / "wandb_run_id").read_text()
  runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
  assert len(runs) == 2 and all(list(r.glob(f"run-{run_id}.wandb")) for r in runs)
  assert list(runs[0].glob("files/media/images/gvu/samples_*.png"))


class Workdir:
  def __init__(self, root):
    self.root = root

  def path(self, *parts):
    return os.path.join(self.root, *parts)


@pytest.mark.parametrize("report, rows, panel_rows", [
    ({"pretrained": {"generation": {"overall": 0.2, "counting": 0.1},
                     "understanding": {"overall": 0.5, "counting": 0.4}},
      "gvu": {"generation": {"overall": 0.3, "counting": 0.2},
              "understanding": {"overall": 0.5, "counting": 0.4}}},
     [{"step": 1, "reward_mean": 0.2, "kl": 0.0, "entropy": 1.3},
      {"step": 2, "reward_mean": 0.3, "kl": 0.01, "entropy": 1.2}], 2),
    (None, [{"step": 1, "reward_mean": 0.2, "kl": 0.0, "entropy": 1.3}], 1),   # GvU only
    ({"pretrained": {"generation": {"overall": 0.2}}}, [], 1),                 # no GvU yet
    (None, [], 0),                                                             # nothing
])
def test_report_png_plots_what_the_workdir_holds(tmp_path, report, rows, panel_rows):
  from PIL import Image
  from gvu_jax.stages import report as report_lib
  if report:
    (tmp_path / "report.json").write_text(json.dumps(report))
  if rows:
    (tmp_path / "gvu").mkdir()
    (tmp_path / "gvu" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  picture = report_lib.plot(Workdir(str(tmp_path)))
  if not panel_rows:
    assert picture is None and not (tmp_path / "report.png").exists()
    return
  with Image.open(tmp_path / "report.png") as saved:
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), picture)
  assert picture.shape == (340 * panel_rows, 1200, 3)


def test_without_warmup_the_clock_runs_from_the_start(clock):
  out = io.StringIO()
  bar = metrics.Progress(4, "export: shards", every_s=0.0, stream=out, warmup=None)
  for _ in range(4):
    clock.now += 5.0
    bar.update(1)
  bar.close()
  assert out.getvalue().splitlines() == [
      "export: shards: 1/4 (25%), 5 s each, 15s left", "export: shards: 2/4 (50%), 5 s each, 10s left",
      "export: shards: 3/4 (75%), 5 s each, 5s left", "export: shards: 4/4 (100%), 5 s each, 0s left"]
