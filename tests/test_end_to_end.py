"""End to end through the real command line on the `mini` preset: the report
contract, pretraining progress, resume equality, skipping finished stages, and
the one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

from gvu_jax import world
from gvu_jax.data import pipeline
from gvu_jax.infra import checkpoint, files
from gvu_jax.rl import state as train_state, step as rl_step
from gvu_jax.stages import context, pretrain
from helpers_run import REPO, recipe_config, run_main


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def snapshot(directory):
  """{relative path: bytes} of every file below `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


@pytest.mark.slow
def test_report_contract(full_run):
  workdir, proc = full_run
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert list(report) == ["pretrained", "gvu"]
  for stage in report.values():
    for part in ("generation", "understanding", "reward_ranking"):
      assert set(stage[part]) == {"overall", *world.CATEGORIES}
      assert all(0.0 <= v <= 1.0 for v in stage[part].values())
      assert stage[part]["overall"] == pytest.approx(
          np.mean([stage[part][c] for c in world.CATEGORIES]))
  assert "| generation overall |" in proc.stdout
  # a log, not a terminal: plain progress lines, the clock started after compiling
  assert "\r" not in proc.stderr and "gvu: 0/4 (0%), compiling" in proc.stderr
  assert "eval gvu: 5/5 (100%)" in proc.stderr
  assert "| reward_ranking_gvu_prompts position |" in proc.stdout
  for path in ("grids/pretrained.png", "grids/gvu.png", "report.md",
               "pretrain/metrics.jsonl", "gvu/metrics.jsonl", "pretrain/tokenizer.json"):
    assert os.path.exists(os.path.join(workdir, path)), path


@pytest.mark.slow
def test_tensorboard_shows_every_stage_and_the_evaluations(full_run):
  """The default run's event files: the JSONL's scalars for pretraining and GvU,
  report.json's numbers before (step 0) and after GvU (step gvu.steps), and the
  evaluation grids."""
  from helpers_events import read_events
  workdir = full_run[0]
  for stage in ("pretrain", "gvu"):
    scalars, images, _ = read_events(os.path.join(workdir, "tensorboard", stage))
    rows = read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
    assert scalars == pytest.approx({(f"{stage}/{k}", r["step"]): v for r in rows
                                     for k, v in r.items() if k != "step"})
  assert sorted(images) == [("gvu/samples", 2), ("gvu/samples", 4)]   # gvu.grid_every=2
  scalars, images, _ = read_events(os.path.join(workdir, "tensorboard", "eval"))
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  for stage, step in (("pretrained", 0), ("gvu", 4)):
    for part in ("generation", "understanding", "reward_ranking"):
      for key, value in report[stage][part].items():
        assert scalars[f"eval/{part}/{key}", step] == pytest.approx(value)
    assert scalars["eval/intrinsic_reward/mean", step] == pytest.approx(
        report[stage]["intrinsic_reward"])
    assert images["eval/grid", step].shape[2] == 3
  # before and after GvU side by side: the two grids, as written to grids/
  before, after = images["eval/grid", 0], images["eval/grid", 4]
  pair = images["eval/before_after", 4]
  np.testing.assert_array_equal(pair[:before.shape[0], :before.shape[1]], before)
  np.testing.assert_array_equal(pair[:after.shape[0], -after.shape[1]:], after)
  with PIL.Image.open(os.path.join(workdir, "grids", "before_after.png")) as saved:
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), pair)
  with PIL.Image.open(os.path.join(workdir, "report.png")) as saved:
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), images["eval/report", 4])


@pytest.mark.slow
def test_an_embedded_world_policy_exports_and_draws_as_in_its_workdir(full_run, tmp_path):
  """export writes the embedded world's policy in gvu_jax's own layout (the only
  one it has), every tensor equal to the policy's; generate draws the same
  images from the export as from the workdir; the workdir is only read."""
  from gvu_jax.interop import export, generate
  workdir = full_run[0]
  before = snapshot(workdir)
  policy = export.export(workdir, str(tmp_path / "e"), log=lambda *_: None)
  done = json.loads((tmp_path / "e" / export.DONE_FILE).read_text())
  assert (done["format"], done["family"], done["step"]) == ("safetensors", "embedded",
                                                            policy.step)
  assert export.check(str(tmp_path / "e"), policy) == {
      "format": "safetensors", "files_max_abs_diff": 0.0, "ok": True}
  m, params = export.load_own(str(tmp_path / "e"))
  assert m.to_dict() == policy.model.to_dict()
  jax.tree.map(np.testing.assert_array_equal, params, policy.params())
  for fmt in ("transformers", "peft"):
    with pytest.raises(export.InputError, match=f"embedded-world run has no {fmt} model"):
      export.export(workdir, str(tmp_path / fmt), fmt=fmt)
    assert not (tmp_path / fmt).exists()
  kw = dict(n=2, cfg=3.0, seed=5, log=lambda *_: None)
  prompt = ["a red circle"]
  drawn = generate.generate(workdir, prompt, str(tmp_path / "g1"), **kw)
  again = generate.generate(str(tmp_path / "e"), prompt, str(tmp_path / "g2"), **kw)
  np.testing.assert_array_equal(drawn, again)
  assert drawn.shape == (1, 2, m.vision.image_size, m.vision.image_size, 3)
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_pretraining_loss_decreases(full_run):
  rows = read_jsonl(os.path.join(full_run[0], "pretrain", "metrics.jsonl"))
  assert [r["step"] for r in rows] == [10, 20, 30]
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert rows[-1]["t2i_loss"] < rows[0]["t2i_loss"]
  assert rows[-1]["i2t_loss"] < rows[0]["i2t_loss"]
  assert 0 < rows[-1]["lr"] < rows[0]["lr"]   # cosine decay, still moving at the end


@pytest.mark.slow
def test_gvu_logs_every_quantity(full_run):
  rows = read_jsonl(os.path.join(full_run[0], "gvu", "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4]
  for key in ("reward_mean", "reward_std", "token_logp_mean", "kl", "clip_fraction",
              "entropy", "grad_norm", "lr", "time_rollout", "time_decode", "time_reward",
              "time_update", "images_per_s"):
    assert all(np.isfinite(r[key]) for r in rows), key


@pytest.mark.slow
def test_two_gvu_steps_in_process_log_what_the_command_line_logs(full_run):
  """rl/step.py's parts called with explicit arguments, no command line and no
  stage loop, from the mini run's pretrained weights: after steps 1 and 2 every
  metric the command line logged for step 2 (its timings aside) is the same."""
  workdir, _ = full_run
  config = recipe_config("synthetic", "mini")
  ctx = context.create(config, workdir)
  _, params = pretrain.load(ctx)
  c = config.gvu
  graphdef, roles, (tx, schedule), state = train_state.init(c, ctx.model, params, config.seed)
  state, frozen = ctx.layout.put_params(state), ctx.layout.put_params(params)
  fns = rl_step.make(graphdef, roles, tx, schedule, state, c=c, reward=config.reward,
                  model=ctx.model, templates=ctx.templates, image_tokenizer=ctx.image_tokenizer,
                  reward_weights=ctx.reward_weights, layout=ctx.layout)
  prompts = pipeline.DrawnPrompts(ctx.gvu_specs, c.prompts_per_step, config.seed)
  for n in (1, 2):
    texts = [p.text for p in next(prompts)]
    state, m, r, s, seconds, _ = rl_step.gvu_step(
        fns, state, frozen, roles, texts, rl_step.step_key(jax.random.key(config.seed), n), n, c.mu)
  m = rl_step.step_metrics(m, r, s, c.group_size, seconds)
  logged = read_jsonl(os.path.join(workdir, "gvu", "metrics.jsonl"))[0]
  assert logged["step"] == 2
  compared = {k for k in logged if k != "step" and not k.startswith("time_")} - {"images_per_s"}
  assert len(compared) >= 10 and compared <= set(m)
  assert {k: m[k] for k in compared} == {k: logged[k] for k in compared}


@pytest.mark.slow
def test_lr_spans_every_update_when_each_step_updates_mu_times(full_run, tmp_path):
  """gvu.mu=2 with a cosine schedule: the schedule runs over steps x mu updates, so
  warmup ends after warmup_steps steps and the last step still learns; metrics.jsonl
  logs the rate of each step's last update."""
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(workdir, "pretrain"))
  run_main(workdir, "--config.mode=gvu", "--config.gvu.mu=2", "--config.gvu.schedule=cosine",
           "--config.gvu.warmup_steps=1", "--config.gvu.log_every=1")
  lr = [r["lr"] for r in read_jsonl(os.path.join(workdir, "gvu", "metrics.jsonl"))]
  peak, updates, warmup = 1e-3, 4 * 2, 1 * 2   # the mini preset: 4 steps, lr 1e-3
  cosine = lambda k: peak * 0.5 * (1 + np.cos(np.pi * (k - warmup) / (updates - warmup)))
  # The last update of step s is update 2s - 1 (from 0): 1 is warmup's second half.
  np.testing.assert_allclose(lr, [peak * 1 / 2, cosine(3), cosine(5), cosine(7)], rtol=1e-5)
  assert lr[-1] > 0.05 * peak


@pytest.mark.slow
def test_gvu_resume_reproduces_uninterrupted_run(full_run, tmp_path):
  """A GvU run stopped after 2 steps and restarted matches the 4-step run exactly."""
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(workdir, "pretrain"))
  run_main(workdir, "--config.mode=gvu", "--config.gvu.steps=2")
  # What a crash after the checkpoint can leave: a later step's line and a cut one.
  # The resumed run cuts them off instead of appending after them.
  with open(os.path.join(workdir, "gvu", "metrics.jsonl"), "a") as f:
    f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
  proc = run_main(workdir, "--config.mode=gvu")
  assert "gvu: resuming from step 2" in proc.stdout
  timing = lambda r: {k: v for k, v in r.items() if not k.startswith(("time_", "images_per_s"))}
  split = [timing(r) for r in read_jsonl(os.path.join(workdir, "gvu", "metrics.jsonl"))]
  whole = [timing(r) for r in read_jsonl(os.path.join(full_run[0], "gvu", "metrics.jsonl"))]
  assert split == whole
  a = checkpoint.CheckpointStore(os.path.join(workdir, "gvu", "checkpoints"), 2)
  b = checkpoint.CheckpointStore(os.path.join(full_run[0], "gvu", "checkpoints"), 2)
  assert a.latest_step() == b.latest_step() == 4
  sa = a.manager.restore(4)["state"]
  sb = b.manager.restore(4)["state"]
  jax.tree.map(np.testing.assert_array_equal, sa, sb)
  a.close()
  b.close()


@pytest.mark.slow
def test_evaluation_does_not_depend_on_the_batch_size(full_run, tmp_path):
  """The same weights evaluated 16 prompts at a time instead of 48: the same
  report (every image draws from a key of its own prompt and sample)."""
  workdir = str(tmp_path)
  for stage in ("pretrain", "gvu"):
    shutil.copytree(os.path.join(full_run[0], stage), os.path.join(workdir, stage))
  run_main(workdir, "--config.mode=eval", "--config.eval.batch_size=16")
  with open(os.path.join(full_run[0], "report.json")) as f:
    whole = json.load(f)
  with open(os.path.join(workdir, "report.json")) as f:
    again = json.load(f)
  for stage in whole:
    assert again[stage].pop("intrinsic_reward") == pytest.approx(
        whole[stage].pop("intrinsic_reward"), rel=1e-5)   # a float sum in another order
  assert again == whole


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  """Two runs never write into one workdir: the second is one line naming the
  first's pid, and writes nothing."""
  import fcntl
  with open(tmp_path / files.LOCK_FILE, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("4242")
    lock.flush()
    proc = run_main(str(tmp_path), check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (f"error: --workdir={tmp_path}: in use by another gvu_jax run "
                                 "(pid 4242); wait for it to finish or use another --workdir")
  assert os.listdir(tmp_path) == [files.LOCK_FILE]


@pytest.mark.slow
def test_finished_pretraining_is_skipped(full_run):
  before = snapshot(os.path.join(full_run[0], "pretrain", "checkpoints"))
  proc = run_main(full_run[0], "--config.mode=pretrain")
  assert "skipping" in proc.stdout
  assert snapshot(os.path.join(full_run[0], "pretrain", "checkpoints")) == before


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.lm.hidden=48"], "pretrain/ (model.lm.hidden: 32 -> 48); gvu/ "
     "(model.lm.hidden: 32 -> 48, upstream model.lm.hidden: 32 -> 48)"),
    # a checkpoint pretrained on other text->image data is not silently reused
    (["--config.pretrain.t2i_mislabel=0"], "pretrain/ (pretrain.t2i_mislabel: 0.3 -> 0.0); "
     "gvu/ (upstream pretrain.t2i_mislabel: 0.3 -> 0.0)"),
    # a finished run rerun with other settings: not 'skipping' with the old report
    (["--config.gvu.lr=0.5", "--config.seed=7"],
     "pretrain/ (seed: 0 -> 7); gvu/ (gvu.lr: 0.001 -> 0.5, seed: 0 -> 7, upstream seed: 0 -> 7)"),
    (["--config.reward.aggregation=prob"], "gvu/ (reward.aggregation: \"geo_mean_prob\" -> \"prob\")"),
    # pretraining run longer under a GvU stage whose reference is the shorter one
    (["--config.pretrain.steps=40"],
     "pretrain/ (pretrain.steps: 30 -> 40); gvu/ (upstream pretrain.steps: 30 -> 40)"),
])
@pytest.mark.slow
def test_a_workdir_never_reports_results_another_config_produced(full_run, overrides, message):
  """A rerun whose result-affecting keys or upstream differ from what the stages
  hold is refused before any stage runs, naming every key (old -> new); nothing
  in the workdir changes, the report included."""
  before = snapshot(full_run[0])
  proc = run_main(full_run[0], *overrides, check=False)
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert err == [f"error: {full_run[0]} holds results of another config: {message}; use "
                 "another --workdir, or the same settings"], proc.stderr
  assert snapshot(full_run[0]) == before


@pytest.mark.slow
def test_each_stage_records_what_produced_it(full_run):
  for stage in ("pretrain", "gvu"):
    with open(os.path.join(full_run[0], stage, "run.json")) as f:
      record = json.load(f)
    assert record["stage"] == stage and record["config"]["seed"] == 0
    assert set(record["environment"]) == {"jax", "flax", "device_kind", "device_count",
                                          "process_count", "git_commit"}
    assert record["environment"]["jax"] == jax.__version__
  assert record["config"]["gvu.lr"] == 1e-3 and "gvu.log_every" not in record["config"]
  assert record["upstream"]["pretrain.steps"] == 30


@pytest.mark.parametrize("args, message", [
    (["--config.pretrain.stepz=3"], "--config.pretrain.stepz: unknown config key 'stepz'"),
    (["--config.mode=train"], "mode='train': expected one of ['all', 'pretrain'"),
    (["--config.seed=abc"], "--config.seed"),
])
@pytest.mark.slow
def test_bad_config_is_one_line_error(tmp_path, args, message):
  proc = run_main(str(tmp_path), *args, check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  if message:
    assert message in lines[0]


# A learning rate past float32's range: finite as a config value, infinite in the
# optimizer, so every update is non-finite.
OVERFLOWING_LR = "--config.gvu.lr=1e39"


@pytest.mark.slow
def test_non_finite_updates_are_skipped_then_the_run_stops(full_run, tmp_path):
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(tmp_path, "pretrain"))
  proc = run_main(str(tmp_path), "--config.mode=gvu", OVERFLOWING_LR,
                  "--config.gvu.max_nonfinite_steps=3", check=False)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "3 non-finite updates in a row at step 3" in errors[0]
  rows = read_jsonl(os.path.join(tmp_path, "gvu", "metrics.jsonl"))
  assert [r["skipped"] for r in rows] == [1.0, 1.0, 1.0]
  # Only the finished step-2 checkpoint exists, and it holds the untouched adapters.
  store = checkpoint.CheckpointStore(os.path.join(tmp_path, "gvu", "checkpoints"), 2)
  state = store.manager.restore(store.latest_step())["state"]
  store.close()
  assert store.latest_step() == 2 and int(state["step"]) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["trainable"]))


@pytest.mark.slow
def test_a_run_whose_every_update_was_skipped_does_not_finish(full_run, tmp_path):
  """Fewer steps than max_nonfinite_steps, all skipped: exit 2, and no final
  checkpoint, so a rerun does not take the run for finished."""
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(tmp_path, "pretrain"))
  proc = run_main(str(tmp_path), "--config.mode=gvu", OVERFLOWING_LR, "--config.gvu.steps=2",
                  check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert "all 2 updates of this run were skipped" in errors[0]
  store = checkpoint.CheckpointStore(os.path.join(tmp_path, "gvu", "checkpoints"), 2)
  assert store.latest_step() is None
  store.close()


@pytest.mark.slow
def test_bad_preset_unwritable_workdir_and_missing_checkpoint(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "gvu_jax.main", "--config=configs/synthetic.py:huge",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2 and "unknown preset 'huge'" in proc.stderr
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  proc = run_main(str(blocker / "sub"), check=False)
  assert proc.returncode == 2 and f"--workdir={blocker}/sub: cannot create it" in proc.stderr
  proc = run_main(str(tmp_path / "empty"), "--config.mode=eval", check=False)
  assert proc.returncode == 2 and "no finished pretraining checkpoint" in proc.stderr


def test_checkpoint_store_round_trip(tmp_path):
  state = {"params": {"layers": {0: {"w": np.arange(6.0).reshape(2, 3)}}, "b": np.asarray(2.5, np.float32)},
           "step": np.asarray(7, np.int32)}
  store = checkpoint.CheckpointStore(str(tmp_path), keep=2)
  store.save(7, state, {"data_position": 112})
  store.close()
  store = checkpoint.CheckpointStore(str(tmp_path), keep=2)
  restored, meta = store.restore(store.latest_step(), state)
  store.close()
  assert meta == {"data_position": 112}
  jax.tree.map(np.testing.assert_array_equal, restored, state)


@pytest.mark.slow
def test_eval_on_world_prompts_exports_and_judges(full_run, tmp_path):
  """mode=eval with eval.prompts: GenEval-layout images of the file's world prompts
  for both stages, each judged (the judge's verdicts match the written PNGs)."""
  from PIL import Image
  from gvu_jax.world import judge
  workdir = str(tmp_path / "run")
  for stage in ("pretrain", "gvu"):
    shutil.copytree(os.path.join(full_run[0], stage), os.path.join(workdir, stage))
  specs = world.split_specs(0, 0.2, 0.3).heldout[::9][:3]
  prompts = tmp_path / "world.txt"
  prompts.write_text("".join(s.text + "\n" for s in specs))
  run_main(workdir, "--config.mode=eval", f"--config.eval.prompts={prompts}",
           "--config.eval.images_per_prompt=2")
  for stage in ("pretrained", "gvu"):
    out = os.path.join(workdir, "eval", stage)
    records = read_jsonl(os.path.join(out, "geneval_rewards.jsonl"))
    assert [r["index"] for r in records] == [0, 1, 2]
    for r, spec in zip(records, specs):
      files = [os.path.join(out, "geneval", f"{r['index']:05d}", "samples", f"{n:04d}.png")
               for n in range(2)]
      images = np.stack([np.asarray(Image.open(f)) for f in files])
      assert r["judge"] == judge.judge_batch(images, [spec, spec]).mean()
    summary = json.load(open(os.path.join(out, "geneval_summary.json")))
    assert set(summary["judge_accuracy"]) == {"overall"} | {s.category for s in specs}
  assert "| judge_accuracy | overall |" in open(os.path.join(workdir, "eval", "summary.md")).read()

  prompts.write_text("a photo of a dragon\n")
  proc = run_main(workdir, "--config.mode=eval", f"--config.eval.prompts={prompts}", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: eval.prompts={prompts}: 'a photo of a dragon' is not a prompt of the embedded "
      "world; its judge scores only those (gvu_jax/world/)")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_0_and_the_resumed_run_matches(full_run, tmp_path):
  """SIGTERM during GvU: the step in flight finishes, its checkpoint is written,
  the process exits 0; the same command then ends where an uninterrupted run does."""
  import re
  import signal
  from helpers_run import main_command, main_env
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(workdir, "pretrain"))
  proc = subprocess.Popen(main_command(workdir, "--config.mode=gvu"), cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=main_env(PYTHONUNBUFFERED="1"))
  for line in proc.stdout:   # compiled ahead; the first step (and its compiles) next
    if line.startswith("gvu: mesh"):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  stopped = re.search(r"gvu: stopped on SIGTERM after step (\d+); checkpoint saved", out)
  assert stopped, out
  step = int(stopped.group(1))
  assert 1 <= step < 4
  store = checkpoint.CheckpointStore(os.path.join(workdir, "gvu", "checkpoints"), 2)
  assert store.latest_step() == step
  store.close()
  resumed = run_main(workdir, "--config.mode=gvu")
  assert f"gvu: resuming from step {step}" in resumed.stdout
  untimed = lambda r: {k: v for k, v in r.items() if not k.startswith(("time_", "images_per_s"))}
  assert ([untimed(r) for r in read_jsonl(os.path.join(workdir, "gvu", "metrics.jsonl"))] ==
          [untimed(r) for r in read_jsonl(os.path.join(full_run[0], "gvu", "metrics.jsonl"))])


@pytest.mark.slow
def test_a_damaged_checkpoint_is_reported_not_loaded(full_run, tmp_path):
  """A truncated file in the latest GvU checkpoint: one error line naming the step,
  exit 2, nothing written; moving the step away resumes from the one before."""
  workdir = str(tmp_path / "run")
  for stage in ("pretrain", "gvu"):
    shutil.copytree(os.path.join(full_run[0], stage), os.path.join(workdir, stage))
  step_dir = os.path.join(workdir, "gvu", "checkpoints", "4")
  data = os.path.join(step_dir, "state", "d")   # the arrays' bytes (OCDBT)
  for name in os.listdir(data):
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(os.path.getsize(os.path.join(data, name)) // 2)
  before = snapshot(workdir)
  proc = run_main(workdir, "--config.mode=gvu", "--config.gvu.steps=6", check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: {step_dir}: cannot read this checkpoint (")
  assert lines[-1].endswith("it is damaged or incomplete: move it away to resume from the one "
                            "before")
  assert snapshot(workdir) == before
  shutil.move(step_dir, str(tmp_path / "damaged_4"))
  proc = run_main(workdir, "--config.mode=gvu", "--config.gvu.steps=4")
  assert "gvu: resuming from step 2" in proc.stdout


@pytest.mark.parametrize("moment, latest", [("the step-2 save", (None,)),
                                            ("rollout:3", (None, 2)), ("update:3", (None, 2))])
@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_state(full_run, tmp_path, moment, latest):
  """SIGKILL while Orbax writes the step-2 checkpoint (its temporary folder exists),
  after step 3's rollout, or after its update (GVU_FAULT; the step-2 save may
  still be in flight then): a half-written save is never taken as the latest, and
  the restarted run ends bit for bit where an uninterrupted one does, data
  position and PRNG state included."""
  import time
  from helpers_run import main_command, main_env
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(full_run[0], "pretrain"), os.path.join(workdir, "pretrain"))
  checkpoints = os.path.join(workdir, "gvu", "checkpoints")
  if ":" in moment:
    killed = run_main(workdir, "--config.mode=gvu", check=False, env={"GVU_FAULT": moment})
    assert killed.returncode == -9
  else:
    proc = subprocess.Popen(main_command(workdir, "--config.mode=gvu"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=main_env())
    saving = lambda: os.path.isdir(os.path.join(checkpoints, "2.orbax-checkpoint-tmp"))
    while proc.poll() is None and not saving():
      time.sleep(0.001)
    assert proc.poll() is None, "the run ended before the save was caught"
    proc.kill()
    proc.wait()
  store = checkpoint.CheckpointStore(checkpoints, 2)
  assert store.latest_step() in latest
  store.close()
  run_main(workdir, "--config.mode=gvu")
  a = checkpoint.CheckpointStore(checkpoints, 2)
  b = checkpoint.CheckpointStore(os.path.join(full_run[0], "gvu", "checkpoints"), 2)
  assert a.latest_step() == b.latest_step() == 4
  jax.tree.map(np.testing.assert_array_equal, a.manager.restore(4)["state"],
               b.manager.restore(4)["state"])
  a.close()
  b.close()
