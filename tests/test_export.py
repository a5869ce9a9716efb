"""A converted Janus checkpoint through the main command: the GvU recipe, and
evaluation exports in the benchmarks' layouts (resumable)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers_run import recipe_command, run_two_gvu_steps  # noqa: E402
from helpers_janus import ROOT  # noqa: E402


@pytest.mark.slow
def test_gvu_recipe_runs_on_a_converted_checkpoint(converted, tmp_path):
  """configs/janus_pro_1b.py:lora end to end on the tiny conversion (2 steps)."""
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("# GenEval-style\nw5 w6 w7\nw8 w9\nw10 w11\n")
  # (a constant learning rate, so a 1-step run continues into the 2-step one exactly)
  args = recipe_command("configs/janus_pro_1b.py:lora", converted["transformers"], prompts,
                        tmp_path / "run", "--config.gvu.checkpoint_every=1",
                        "--config.gvu.schedule=constant")
  run_two_gvu_steps(args, tmp_path / "run")
  assert not (tmp_path / "run" / "gvu" / "reference").exists()   # the conversion is the reference
  # Stopped after step 1 and resumed: the grain prompt stream continues from the
  # state the checkpoint holds, and step 2 is the uninterrupted run's.
  split = [a if not a.startswith("--workdir") else f"--workdir={tmp_path / 'split'}" for a in args]
  for steps in (1, 2):
    part = subprocess.run(split + [f"--config.gvu.steps={steps}"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert part.returncode == 0, part.stderr[-3000:]
  assert "gvu: resuming from step 1" in part.stdout
  untimed = lambda path: [{k: v for k, v in json.loads(l).items()
                           if not k.startswith(("time_", "images_per_s"))}
                          for l in path.read_text().splitlines()]
  assert untimed(tmp_path / "split" / "gvu" / "metrics.jsonl") == untimed(
      tmp_path / "run" / "gvu" / "metrics.jsonl")
  # mode=eval in the same workdir: GenEval folders for the base model and the policy
  evaluated = subprocess.run(args + ["--config.mode=eval", "--config.eval.images_per_prompt=2",
                                     "--config.eval.batch_size=2"],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  for stage in ("base", "gvu"):
    folders = tmp_path / "run" / "eval" / stage / "geneval"
    assert sorted(p.name for p in folders.iterdir()) == ["00000", "00001", "00002"]
    assert json.loads((folders / "00001" / "metadata.jsonl").read_text()) == {
        "tag": "prompts", "prompt": "w8 w9"}


@pytest.mark.slow
def test_eval_writes_the_geneval_layout_and_resumes(converted, tmp_path):
  """mode=eval on the tiny conversion: GenEval's folder layout with each prompt's
  metadata; an interrupted export resumes with the images an uninterrupted one
  writes, and finished folders are not rewritten."""
  from PIL import Image
  prompts = tmp_path / "prompts.jsonl"
  rows = [{"tag": "counting", "include": [{"class": "w5", "count": 2}], "prompt": "w5 w6 w7"},
          {"prompt": "w8 w9"}, {"tag": "colors", "prompt": "w6"}]
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  run = lambda workdir: subprocess.run(
      [sys.executable, "-m", "gvu_jax.main", "--config=configs/janus_pro_1b.py:lora",
       f"--config.checkpoint={converted['transformers']}", "--config.expect_model=any",
       "--config.mode=eval", f"--config.eval.prompts={prompts}", "--config.data.prompts=world",
       "--config.eval.images_per_prompt=2", "--config.eval.batch_size=2",
       "--config.model_options.max_prompt_tokens=4", "--config.model_options.dtype=float32",
       f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  whole = run(tmp_path / "whole")
  assert whole.returncode == 0, whole.stderr[-3000:]
  out = tmp_path / "whole" / "eval" / "base" / "geneval"
  assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
  expected = [dict(rows[0]), {"tag": "prompts", "prompt": "w8 w9"}, dict(rows[2])]
  for i, meta in enumerate(expected):
    assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == meta
    samples = sorted((out / f"{i:05d}" / "samples").iterdir())
    assert [p.name for p in samples] == ["0000.png", "0001.png"]
    assert Image.open(samples[0]).size == (16, 16) and Image.open(samples[0]).mode == "RGB"
  assert "evaluate_images.py" in whole.stdout and "(GenEval)" in whole.stdout
  # the label-free metric beside the images: each prompt's mean intrinsic reward
  rewards = [json.loads(l) for l in (out.parent / "geneval_rewards.jsonl").read_text().splitlines()]
  assert [(r["index"], r["tag"]) for r in rewards] == [(0, "counting"), (1, "prompts"), (2, "colors")]
  assert all(0 < r["reward"] <= 1 for r in rewards)
  summary = json.loads((out.parent / "geneval_summary.json").read_text())
  by_tag = {r["tag"]: r["reward"] for r in rewards}
  assert summary["intrinsic_reward"] == pytest.approx(
      {"overall": np.mean(list(by_tag.values())), **by_tag})
  assert (out.parent / "geneval_grid.png").exists()
  assert "| metric | tag | base |" in (tmp_path / "whole" / "eval" / "summary.md").read_text()

  # An export stopped after the first batch (prompts 0 and 1), with prompt 2's
  # folder half written: the rerun finishes it as the whole run did.
  resumed = tmp_path / "resumed" / "eval" / "base" / "geneval"
  resumed.mkdir(parents=True)
  for i in (0, 1):
    shutil.copytree(out / f"{i:05d}", resumed / f"{i:05d}")
  (resumed.parent / "geneval_rewards.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rewards[:2]))
  (resumed / "00002.partial" / "samples").mkdir(parents=True)
  kept = (resumed / "00000" / "samples" / "0000.png").stat().st_mtime_ns
  again = run(tmp_path / "resumed")
  assert again.returncode == 0, again.stderr[-3000:]
  assert sorted(p.name for p in resumed.iterdir()) == ["00000", "00001", "00002"]
  assert (resumed / "00000" / "samples" / "0000.png").stat().st_mtime_ns == kept
  for name in ("metadata.jsonl", "samples/0000.png", "samples/0001.png"):
    assert (resumed / "00002" / name).read_bytes() == (out / "00002" / name).read_bytes()
  assert (resumed.parent / "geneval_summary.json").read_text() == \
      (out.parent / "geneval_summary.json").read_text().replace(str(tmp_path / "whole"),
                                                                str(tmp_path / "resumed"))

  # What a kill leaves at other moments, then the rerun: every file as the whole
  # run wrote it (the grid shows what one process made, so it is left out).
  def files_of(workdir):
    root = workdir / "eval"
    return {str(p.relative_to(root)): p.read_bytes().replace(str(workdir).encode(), b"W")
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith("grid.png")}

  # (a) all three folders written, record 1 cut mid-line, record 2 never written
  # (a rerun once failed on 'Directory not empty'; a cut line was a traceback)
  cut = tmp_path / "cut"
  shutil.copytree(tmp_path / "whole", cut)
  lines = (cut / "eval" / "base" / "geneval_rewards.jsonl").read_text().splitlines(True)
  (cut / "eval" / "base" / "geneval_rewards.jsonl").write_text(lines[0] + lines[1][:-9])
  # (b) a real SIGKILL after prompt 2's images, before its record; (c) a SIGTERM
  # after prompt 0's images: evaluation stops after that batch and exits 0
  for workdir, fault in ((cut, None), (tmp_path / "killed", "export_images:2"),
                         (tmp_path / "stopped", "export_images:0:TERM")):
    if fault:
      os.environ["GVU_FAULT"] = fault
      try:
        died = run(workdir)
      finally:
        del os.environ["GVU_FAULT"]
      if fault.endswith("TERM"):
        assert died.returncode == 0 and "eval: stopped on SIGTERM" in died.stdout, died.stderr
        assert not (workdir / "eval" / "base" / "geneval" / "00002").exists()
      else:
        assert died.returncode == -9, died.stderr[-2000:]
    again = run(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_of(workdir) == files_of(tmp_path / "whole"), fault


@pytest.mark.slow
def test_eval_on_a_dataset_writes_its_benchmark_layout(converted, tmp_path):
  """eval.prompts names a prompt dataset (prepared from manual_dir): T2I-CompBench's
  layout, one folder per category, with the intrinsic reward per category."""
  manual = tmp_path / "manual"
  manual.mkdir()
  for c in ("color", "shape", "texture", "spatial", "non_spatial", "complex"):
    for split in ("train", "val"):
      (manual / f"{c}_{split}.txt").write_text("w5 w6 w7\nw8 w9\n" if c != "shape" else "w10\n")
  run = subprocess.run(
      [sys.executable, "-m", "gvu_jax.main", "--config=configs/janus_pro_1b.py:lora",
       f"--config.checkpoint={converted['transformers']}", "--config.expect_model=any",
       "--config.mode=eval", "--config.eval.prompts=t2i_compbench:color_val+shape_val",
       "--config.data.prompts=world",
       f"--config.data.tfds_dir={tmp_path / 'tfds'}", f"--config.data.manual_dir={manual}",
       "--config.eval.images_per_prompt=2", "--config.eval.batch_size=2",
       "--config.model_options.max_prompt_tokens=4", "--config.model_options.dtype=float32",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = tmp_path / "run" / "eval" / "base" / "t2i_compbench"
  assert sorted(os.listdir(out / "color" / "samples")) == [
      "w5 w6 w7_000000.png", "w5 w6 w7_000001.png", "w8 w9_000000.png", "w8 w9_000001.png"]
  assert sorted(os.listdir(out / "shape" / "samples")) == ["w10_000000.png", "w10_000001.png"]
  summary = json.loads((out.parent / "t2i_compbench_summary.json").read_text())
  assert summary["prompts"] == 3 and set(summary["intrinsic_reward"]) == {"overall", "color", "shape"}


# --- presets ----------------------------------------------------------------



@pytest.mark.slow
@pytest.mark.parametrize("training", ["lora", "full"])
def test_an_exported_policy_loads_in_transformers_and_peft_as_trained(
    sources, converted, tmp_path, training):
  """Tiny Janus -> convert -> GvU 2 steps -> export -> transformers (+ PEFT on the
  source checkpoint): understanding, CFG generation and reward logits equal
  gvu_jax's policy within 1e-4 in float32 (export --check, as its users load it)."""
  from gvu_jax.interop import export
  from gvu_jax.interop.convert import parity
  from helpers_janus import IMAGE_TOKEN, PAD
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("w5 w6 w7\nw8 w9\n")
  run = tmp_path / "run"
  extra = ["--config.gvu.lr=3e-2", "--config.gvu.schedule=constant"]   # adapters far from 0
  if training == "full":
    extra += ["--config.gvu.lora.enabled=False", "--config.gvu.lr=1e-3"]
  run_two_gvu_steps(recipe_command("configs/janus_pro_1b.py:lora", converted["transformers"],
                                   prompts, run, *extra), run)
  policy = export.export(str(run), str(tmp_path / "hf"), log=lambda *_: None)
  report = export.check(str(tmp_path / "hf"), policy)
  assert report["ok"] and report["format"] == "transformers", report
  base = transformers.JanusForConditionalGeneration.from_pretrained(
      str(sources["transformers"]), dtype=torch.float32, tie_word_embeddings=False).eval()
  trained = parity.passed(parity.compare(base, export.policy_model(policy), IMAGE_TOKEN, PAD))
  assert not all(trained.values())   # GvU moved the policy away from the base
  if training == "lora":
    pytest.importorskip("peft")
    proc = subprocess.run([sys.executable, "-m", "gvu_jax.export", f"--workdir={run}",
                           f"--dst={tmp_path / 'peft'}", "--format=peft", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["ok"] and report["format"] == "peft", report
  else:
    with pytest.raises(export.InputError, match="has no adapters; use --format=transformers"):
      export.export(str(run), str(tmp_path / "peft"), fmt="peft")
  with pytest.raises(export.InputError, match="exists; pass --force to replace it"):
    export.export(str(run), str(tmp_path / "hf"))
  assert json.loads((tmp_path / "hf" / export.DONE_FILE).read_text())["step"] == 2
  assert "GvU step: 2" in (tmp_path / "hf" / "README.md").read_text()
  from gvu_jax.interop import generate  # a GvU workdir draws from its policy
  kw = dict(n=2, cfg=1.0, seed=0, log=lambda *_: None)
  last = generate.generate(str(run), ["w5 w6 w7"], str(tmp_path / "g2"), **kw)
  with pytest.raises(export.InputError, match="a transformers export; convert it first"):
    generate.generate(str(tmp_path / "hf"), ["w5 w6 w7"], str(tmp_path / "g_hf"), **kw)
  with pytest.raises(export.InputError, match="no checkpoint of step 9"):
    generate.generate(str(run), ["w5 w6 w7"], str(tmp_path / "g9"), step=9, **kw)
  assert last.shape == (1, 2) + last.shape[2:]


def _fake_workdir(root, signature, run=True, step=None):
  """A workdir with gvu/model_config.json = `signature`, gvu/run.json (if `run`)
  and a checkpoint of `step` holding a stand-in training state."""
  (root / "gvu").mkdir(parents=True)
  if signature is not None:
    (root / "gvu" / "model_config.json").write_text(json.dumps(signature))
  if run:
    (root / "gvu" / "run.json").write_text(json.dumps({"config": {}}))
  if step is not None:
    from gvu_jax.infra import checkpoint
    store = checkpoint.CheckpointStore(str(root / "gvu" / "checkpoints"), keep=1)
    store.save(step, {"trainable": {"w": np.zeros(2, np.float32)}}, {})
    store.close()
  return root


_EMBEDDED = {"family": "janus"}


@pytest.mark.parametrize("signature, workdir_kw, kwargs, message", [
    (None, {}, {}, r"holds no GvU run \(no gvu/model_config.json\)"),
    ("[1]", {}, {}, r"model_config.json: holds a JSON list, expected an object"),
    (_EMBEDDED, {"run": False}, {}, r"gvu/run.json: not found"),
    (_EMBEDDED, {}, {}, r"gvu/checkpoints: no checkpoint of step \(any\)"),
    (_EMBEDDED, {"step": 3}, {"step": 4}, r"gvu/checkpoints: no checkpoint of step 4"),
    (_EMBEDDED, {"step": 3}, {}, r"model_config.json: not a model gvu_jax builds"),
    ({"family": "janus", "checkpoint": "/nonexistent"}, {"step": 3}, {},
     "/nonexistent: not a finished gvu_jax conversion"),
    (_EMBEDDED, {}, {"fmt": "onnx"},
     r"--format=onnx: expected one of \['transformers', 'peft', 'safetensors'\]"),
    (_EMBEDDED, {}, {"dtype": "float16"}, "--dtype=float16: expected one of"),
])
def test_what_cannot_be_exported_is_one_line(tmp_path, signature, workdir_kw, kwargs, message):
  from gvu_jax.interop import export
  workdir = _fake_workdir(tmp_path / "w", json.loads(signature) if isinstance(signature, str)
                          else signature, **workdir_kw)
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  with pytest.raises(export.InputError, match=message) as e:
    export.export(str(workdir), str(tmp_path / "out"), **kwargs)
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before   # only read


def test_an_export_never_replaces_what_it_did_not_write(tmp_path):
  from gvu_jax.interop import export
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("mine")
  workdir = _fake_workdir(tmp_path / "w", _EMBEDDED)
  for force in (False, True):
    with pytest.raises(export.InputError, match="out exists"):
      export.export(str(workdir), str(tmp_path / "out"), force=force)
  assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_generate_draws_the_policy_images_reproducibly(converted, tmp_path):
  """generate on a conversion: n PNGs per prompt and a sheet; the same seed draws
  the same images, and a prompt's images do not depend on the prompts beside it."""
  from gvu_jax.interop import generate
  prompts = ["w5 w6 w7", "w8 w9"]
  kw = dict(n=2, cfg=3.0, seed=7, log=lambda *_: None)
  both = generate.generate(str(converted["transformers"]), prompts, str(tmp_path / "a"), **kw)
  assert both.shape[:2] == (2, 2) and both.dtype == np.uint8
  names = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert names == ["00000_0.png", "00000_1.png", "00001_0.png", "00001_1.png", "sheet.png"]
  again = generate.generate(str(converted["transformers"]), prompts, str(tmp_path / "b"), **kw)
  np.testing.assert_array_equal(both, again)
  first = generate.generate(str(converted["transformers"]), prompts[:1], str(tmp_path / "c"),
                            **kw)
  np.testing.assert_array_equal(first[0], both[0])
  proc = subprocess.run([sys.executable, "-m", "gvu_jax.generate",
                         f"--checkpoint={converted['transformers']}", "--prompt=w5 zebra",
                         f"--out={tmp_path / 'd'}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  assert not (tmp_path / "d").exists()
