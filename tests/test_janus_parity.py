"""Janus checkpoints: presets, the converter (both published layouts) and
numerical parity with transformers' JanusForConditionalGeneration.

The tests build tiny random transformers models, save them as transformers
saves them (safetensors) and as the original deepseek release is laid out
(pytorch_model*.bin with the original names), convert both and compare.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gvu_jax import config_check, convert, parity                    # noqa: E402
from gvu_jax.errors import InputError                                 # noqa: E402
from gvu_jax.models import build, presets                             # noqa: E402
from gvu_jax.sampling import Sampler, SamplingConfig                  # noqa: E402
from helpers_run import recipe_command, recipe_config, run_two_gvu_steps  # noqa: E402

IMAGE_TOKEN, PAD, BOS, BOI = 100, 0, 1, 101
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config():
  return presets.janus_config(
      lm=dict(vocab_size=128, hidden=32, layers=2, heads=4, kv_heads=4, intermediate=64,
              rope_theta=10000.0, norm_eps=1e-6, max_position=256),
      vision=dict(image_size=16, patch_size=4, width=32, layers=2, heads=2, mlp_dim=64,
                  norm_eps=1e-6),
      vq=dict(embed_dim=8, num_embeddings=64, latent_channels=32, in_channels=3,
              out_channels=3, base_channels=32, channel_multiplier=(1, 1, 2),
              num_res_blocks=1),
      image_token_embed=32)


def tiny_transformers_model():
  torch.manual_seed(0)
  hf = transformers.JanusForConditionalGeneration(
      parity.hf_config(tiny_model_config(), IMAGE_TOKEN, PAD)).eval()
  with torch.no_grad():   # move every weight off its special init (ones, zeros)
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return hf


def write_tokenizer(directory):
  """A word-level tokenizer with Janus' special tokens at the tiny model's ids."""
  import tokenizers
  from gvu_jax import janus_text as jt
  specials = {jt.PAD: PAD, jt.BOS: BOS, jt.EOS: 2, jt.IMG: IMAGE_TOKEN, jt.BOI: BOI, jt.EOI: 102}
  vocab = {f"w{i}": i for i in range(128) if i not in specials.values()}
  vocab.update(specials)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w3"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(specials))
  tok.save(os.path.join(directory, "tokenizer.json"))


# The original release's names, for writing a test checkpoint in that layout:
# the inverse of convert.to_transformers_names.
_BACK = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.vision_model\.embeddings\.patch_embedding\.", "vision_model.vision_tower.patch_embed.proj."),
    (r"^model\.vision_model\.embeddings\.position_embedding\.weight$", "vision_model.vision_tower.pos_embed"),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"vision_model.vision_tower.blocks.\1.norm\2."),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection_layer\.", r"vision_model.vision_tower.blocks.\1.attn.proj."),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"vision_model.vision_tower.blocks.\1.mlp."),
    (r"^model\.vision_model\.post_layernorm\.", "vision_model.vision_tower.norm."),
    (r"^model\.aligner\.fc1\.", "aligner.layers.0."),
    (r"^model\.aligner\.hidden_layers\.0\.", "aligner.layers.2."),
    (r"^model\.generation_aligner\.fc1\.", "gen_aligner.layers.0."),
    (r"^model\.generation_aligner\.hidden_layers\.0\.", "gen_aligner.layers.2."),
    (r"^model\.generation_head\.proj_out\.", "gen_head.output_mlp_projector."),
    (r"^model\.generation_head\.vision_head\.", "gen_head.vision_head."),
    (r"^model\.generation_embeddings\.", "gen_embed."),
]


def original_state_dict(hf):
  from test_vq import _to_original as hf_to_original_key
  state, out = hf.state_dict(), {}
  for key, t in state.items():
    if key.startswith("model.vqmodel."):
      out["gen_vision_model." + hf_to_original_key(key[len("model.vqmodel."):])] = t
      continue
    m = re.match(r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)$", key)
    if m:
      if m.group(2) == "q":
        base = f"model.vision_model.encoder.layers.{m.group(1)}.self_attn."
        out[f"vision_model.vision_tower.blocks.{m.group(1)}.attn.qkv.{m.group(3)}"] = torch.cat(
            [state[f"{base}{p}_proj.{m.group(3)}"] for p in "qkv"])
      continue
    for pattern, repl in _BACK:
      new = re.sub(pattern, repl, key)
      if new != key:
        out[new] = t[None] if new.endswith("pos_embed") else t
        break
    else:
      raise AssertionError(f"no original name for {key}")
  # Weights the release carries but no forward pass uses: dropped by the converter.
  out["vision_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, 32)
  return out


def original_config(m):
  lm, v, q = m.lm, m.vision, m.vq
  return {
      "model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
      "language_config": {"model_type": "llama", "hidden_size": lm.hidden,
                          "intermediate_size": lm.intermediate,
                          "num_attention_heads": lm.heads, "num_hidden_layers": lm.layers,
                          "vocab_size": lm.vocab_size, "max_position_embeddings": lm.max_position},
      "vision_config": {"cls": "CLIPVisionTower", "params": {
          "model_name": "tiny", "image_size": v.image_size, "patch_size": v.patch_size,
          "width": v.width, "layers": v.layers, "heads": v.heads,
          "mlp_ratio": v.mlp_dim / v.width, "select_layer": -1}},
      "aligner_config": {"cls": "MlpProjector", "params": {
          "depth": 2, "input_dim": v.width, "n_embed": lm.hidden, "projector_type": "mlp_gelu"}},
      "gen_aligner_config": {"cls": "MlpProjector", "params": {
          "depth": 2, "input_dim": q.embed_dim, "n_embed": lm.hidden,
          "projector_type": "mlp_gelu"}},
      "gen_head_config": {"cls": "vision_head", "params": {
          "image_token_embed": m.image_token_embed, "image_token_size": q.num_embeddings,
          "n_embed": lm.hidden}},
      "gen_vision_config": {"cls": "VQ-16", "params": {
          "image_token_size": q.num_embeddings, "n_embed": q.embed_dim,
          "latent_channels": q.latent_channels, "base_channels": q.base_channels,
          "channel_multiplier": list(q.channel_multiplier),
          "num_res_blocks": q.num_res_blocks}},
      "image_token_id": IMAGE_TOKEN,
  }


@pytest.fixture(scope="module")
def hf():
  return tiny_transformers_model()


@pytest.fixture(scope="module")
def sources(hf, tmp_path_factory):
  """The same tiny model in both layouts, sharded."""
  root = tmp_path_factory.mktemp("janus_src")
  t = root / "transformers"
  hf.save_pretrained(t, max_shard_size="100KB")
  write_tokenizer(t)
  o = root / "original"
  o.mkdir()
  state = original_state_dict(hf)
  names = sorted(state)
  halves = {"pytorch_model-00001-of-00002.bin": names[::2],
            "pytorch_model-00002-of-00002.bin": names[1::2]}
  for fname, keys in halves.items():
    torch.save({k: state[k].clone() for k in keys}, o / fname)
  (o / "pytorch_model.bin.index.json").write_text(json.dumps(
      {"weight_map": {k: f for f, keys in halves.items() for k in keys}}))
  (o / "config.json").write_text(json.dumps(original_config(tiny_model_config())))
  write_tokenizer(o)
  return {"transformers": t, "original": o}


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
  out = {}
  for layout, src in sources.items():
    dst = tmp_path_factory.mktemp("janus_dst") / layout
    convert.convert(str(src), str(dst), dtype="float32", log=lambda *_: None)
    out[layout] = dst
  return out


def _model(dst):
  m, params = convert.load(str(dst), dtype="float32")
  graphdef, _ = build.abstract(m)
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


@pytest.mark.parametrize("layout", ["transformers", "original"])
def test_parity_with_transformers(layout, sources, converted, hf):
  assert len(convert.find_shards(convert.epath.Path(sources[layout]))[1]) >= 2
  model = _model(converted[layout])
  assert model.cfg.lm.hidden == 32 and model.cfg.image_tokens == 16
  diffs = parity.compare(hf, model, IMAGE_TOKEN, PAD, seed=1)
  for check, (diff, _) in diffs.items():
    if check.endswith("mismatches"):
      assert diff == 0, (check, diff)
    else:
      assert diff <= 1e-4, (check, diff)


def _reference_greedy(hf, prompt, uncond, num_tokens, w):
  """Greedy CFG decoding written plainly: a full transformers forward per token."""
  rows, codes = torch.tensor(np.stack([prompt, uncond])).long(), []
  with torch.no_grad():
    for _ in range(num_tokens):
      embeds = [hf.get_input_embeddings()(rows)]
      if codes:
        c = torch.tensor([codes, codes]).long()
        embeds.append(hf.prepare_embeddings_for_image_generation(c))
      hidden = hf.model.language_model(inputs_embeds=torch.cat(embeds, 1)).last_hidden_state
      logits = hf.model.generation_head(hidden[:, -1])
      guided = logits[1] + w * (logits[0] - logits[1])
      codes.append(int(torch.argmax(guided)))
  return np.array(codes)


def test_greedy_image_tokens_match(converted, hf):
  model = _model(converted["transformers"])
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  prompt = np.array([BOS, 5, 6, 7, 8, BOI], np.int32)
  uncond = np.array([BOS, PAD, PAD, PAD, PAD, BOI], np.int32)
  n = model.cfg.image_tokens
  sampler = Sampler(graphdef, SamplingConfig(top_k=1, cfg_weight=5.0), num_tokens=n,
                    uncond_row=(uncond[None], np.ones((1, 6), bool)))
  ours = sampler(params, prompt[None], np.ones((1, 6), bool), jax.random.key(0)).codes
  np.testing.assert_array_equal(np.asarray(ours)[0], _reference_greedy(hf, prompt, uncond, n, 5.0))


def test_converted_tree_matches_the_model_definition(converted):
  m, params = convert.load(str(converted["original"]))
  _, like = build.abstract(m)
  assert jax.tree.structure(params) == jax.tree.structure(like)
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, like)
  for name in ("tokenizer.json", "model_config.json", "CONVERTED"):
    assert (converted["original"] / name).exists()


def test_grouped_bfloat16_save_restores_in_any_dtype(sources, converted, tmp_path, monkeypatch):
  monkeypatch.setattr(convert, "SAVE_GROUP_BYTES", 20_000)   # many groups, even this small
  dst = tmp_path / "bf16"
  convert.convert(str(sources["transformers"]), str(dst), dtype="bfloat16", log=lambda *_: None)
  assert len(list((dst / "params").iterdir())) > 3
  _, low = convert.load(str(dst))
  _, high = convert.load(str(dst), param_dtype=np.float32)
  _, full = convert.load(str(converted["transformers"]))
  for a, b, c in zip(jax.tree.leaves(low), jax.tree.leaves(high), jax.tree.leaves(full)):
    assert a.dtype == jnp.bfloat16 and b.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    np.testing.assert_array_equal(np.asarray(np.asarray(c).astype(jnp.bfloat16), np.float32), b)


def test_convert_cli_check(sources, tmp_path):
  """The default conversion (--dtype=auto: this float32 source stays float32)
  passes its own check."""
  dst = tmp_path / "dst"
  run = subprocess.run([sys.executable, "-m", "gvu_jax.convert", f"--src={sources['original']}",
                        f"--dst={dst}", "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads(run.stdout[run.stdout.index("{"):])
  assert report["ok"] and all(report["passed"].values())
  assert report["stored_dtype"] == "float32" and convert.stored_dtype(dst) == "float32"
  assert report["max_abs_diff"]["vq_encode_code_mismatches"] == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_narrower_conversion_passes_its_check_and_says_how(sources, tmp_path, dtype):
  """--dtype=bfloat16 / float16 is checked against transformers with its weights
  rounded the same way, at the float32 tolerance, codes identical."""
  dst = tmp_path / dtype
  convert.convert(str(sources["transformers"]), str(dst), dtype=dtype, log=lambda *_: None)
  report = parity.check(str(sources["transformers"]), str(dst))
  assert report["ok"], report
  assert report["stored_dtype"] == dtype and report["tolerance"] == parity.TOLERANCE
  assert f"rounded to {dtype}" in report["tolerance_note"]
  assert report["max_abs_diff"]["vq_encode_code_mismatches"] == 0


@pytest.mark.parametrize("stored, expected", [
    (("float32",), "float32"), (("bfloat16",), "bfloat16"), (("float16",), "float16"),
    (("bfloat16", "int64"), "bfloat16"), (("float64",), "float32"),
    (("float16", "bfloat16"), "float32"), (("bfloat16", "float32"), "float32"),
    (("int64",), None)])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_auto_dtype_is_the_widest_the_source_stores(tmp_path, stored, expected, fmt):
  """--dtype=auto over every mix of stored dtypes, in both file formats: nothing
  is rounded, and a source without floats is one error naming the directory."""
  from safetensors.torch import save_file
  tensors = {f"t{i}": torch.ones(2, 3, dtype=getattr(torch, d)) for i, d in enumerate(stored)}
  path = tmp_path / f"model.{fmt}"
  if fmt == "safetensors":
    save_file(tensors, str(path))
  else:
    torch.save(tensors, path)
  shards = [convert.epath.Path(path)]
  if expected is None:
    with pytest.raises(InputError, match=f"{tmp_path}: no floating-point tensor .* pass --dtype"):
      convert.auto_dtype(shards)
  else:
    assert convert.auto_dtype(shards) == expected


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
      os.environ["GVU_KILL_AT"] = fault
      try:
        died = run(workdir)
      finally:
        del os.environ["GVU_KILL_AT"]
      if fault.endswith("TERM"):
        assert died.returncode == 0 and "eval: stopped on SIGTERM" in died.stdout, died.stderr
        assert not (workdir / "eval" / "base" / "geneval" / "00002").exists()
      else:
        assert died.returncode == -9, died.stderr[-2000:]
    again = run(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_of(workdir) == files_of(tmp_path / "whole"), fault


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


@pytest.mark.parametrize("name,billions", [("janus_pro_7b", 7.42), ("janus_pro_1b", 2.09),
                                           ("janus_1_3b", 2.09)])
def test_preset_parameter_counts(name, billions):
  """The published sizes count SigLIP's attention-pooling head, which no Janus
  forward pass uses and the converter drops (12 w^2 + 12 w elements at width w);
  the VQ codebook-usage buffer is not a parameter in either count."""
  m = presets.janus(name)
  _, params = build.abstract(m)     # jax.eval_shape: nothing is allocated
  ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  w = m.vision.width
  assert round((ours + 12 * w * w + 12 * w) / 1e9, 2) == billions, ours


def test_config_json_of_both_layouts_reads_the_same(sources):
  a = convert.read_model_config(convert.epath.Path(sources["transformers"]))
  b = convert.read_model_config(convert.epath.Path(sources["original"]))
  for key in ("lm", "vision", "vq", "image_tokens", "image_token_embed", "codebook_size"):
    assert a[key] == b[key], key


def test_published_original_config_reads_as_the_preset(tmp_path):
  """Janus-Pro-7B's released config.json names only some LLaMA sizes; the rest
  are LlamaConfig defaults."""
  cfg = {"model_type": "multi_modality",
         "aligner_config": {"cls": "MlpProjector", "params": {
             "depth": 2, "input_dim": 1024, "n_embed": 4096, "projector_type": "mlp_gelu"}},
         "gen_aligner_config": {"cls": "MlpProjector", "params": {
             "depth": 2, "input_dim": 8, "n_embed": 4096, "projector_type": "mlp_gelu"}},
         "gen_head_config": {"cls": "vision_head", "params": {
             "image_token_embed": 4096, "image_token_size": 16384, "n_embed": 4096}},
         "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": 16384,
                                                          "n_embed": 8}},
         "language_config": {"max_position_embeddings": 16384, "model_type": "llama",
                             "num_hidden_layers": 30, "torch_dtype": "bfloat16",
                             "vocab_size": 102400},
         "vision_config": {"cls": "CLIPVisionTower", "params": {
             "image_size": 384, "model_name": "siglip_large_patch16_384",
             "select_feature": "same", "select_layer": -1}}}
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  m = convert.read_model_config(convert.epath.Path(tmp_path), model="janus_pro_7b")
  assert m.lm.hidden == 4096 and m.image_tokens == 576
  with pytest.raises(InputError, match="--model=janus_pro_1b expects lm="):
    convert.read_model_config(convert.epath.Path(tmp_path), model="janus_pro_1b")


# --- bad input ----------------------------------------------------------------


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


def _fails(src, dst, match, **kw):
  with pytest.raises(InputError, match=match) as e:
    convert.convert(str(src), str(dst), dtype="float32", log=lambda *_: None, **kw)
  assert "\n" not in str(e.value)
  assert not (dst / convert.DONE_FILE).exists()


def test_bad_inputs(sources, tmp_path):
  src = _copy(sources["original"], tmp_path / "missing_shard")
  os.remove(src / "pytorch_model-00002-of-00002.bin")
  _fails(src, tmp_path / "d1", r"index.json names pytorch_model-00002-of-00002.bin, which is missing")
  src = _copy(sources["original"], tmp_path / "no_index")
  os.remove(src / "pytorch_model.bin.index.json")
  _fails(src, tmp_path / "d0", r"found 2 shards \(pytorch_model-00001-of-00002.bin, ...\) but no "
                               r"pytorch_model.bin.index.json")

  src = _copy(sources["transformers"], tmp_path / "no_tok")
  os.remove(src / "tokenizer.json")
  _fails(src, tmp_path / "d2", r"tokenizer.json: not found")

  src = _copy(sources["transformers"], tmp_path / "other_arch")
  cfg = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps(dict(cfg, model_type="llava")))
  _fails(src, tmp_path / "d3", r"model_type 'llava' is not a checkpoint gvu_jax reads \(expected 'janus'")

  src = tmp_path / "bad_shape"
  src.mkdir()
  for name in ("config.json", "tokenizer.json"):
    (src / name).write_text((sources["original"] / name).read_text())
  state = {}
  for f in ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"):
    state.update(torch.load(sources["original"] / f, weights_only=True))
  state["gen_embed.weight"] = torch.zeros(64, 9)
  torch.save(state, src / "pytorch_model.bin")
  _fails(src, tmp_path / "d4", r"model.generation_embeddings.weight has shape \(64, 9\), "
                               r"expected \(64, 8\)")
  state["gen_embed.weight"] = torch.zeros(64, 8, dtype=torch.int64)
  torch.save(state, src / "pytorch_model.bin")
  _fails(src, tmp_path / "d5", r"model.generation_embeddings.weight has dtype int64")
  del state["gen_embed.weight"]
  torch.save(state, src / "pytorch_model.bin")
  _fails(src, tmp_path / "d6", r"missing tensor model.generation_embeddings.weight")


def test_existing_dst_needs_force(sources, tmp_path):
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "notes.txt").write_text("keep me")
  with pytest.raises(InputError, match="exists; pass --force"):
    convert.convert(str(sources["transformers"]), str(dst), log=lambda *_: None)
  with pytest.raises(InputError, match="not a gvu_jax conversion"):
    convert.convert(str(sources["transformers"]), str(dst), force=True, log=lambda *_: None)
  assert (dst / "notes.txt").read_text() == "keep me"


# --- bench mode ---------------------------------------------------------------


def _bench_config(converted, **bench):
  c = recipe_config("janus_pro_1b", "small")
  c.update(checkpoint=str(converted["transformers"]), random_init=False)
  c.bench.update(sampler_batches=(2,), vq_images=2, reward_images=2, reward_answer_tokens=3,
                 reference_forwards=0, repeats=1, **bench)
  return c


def test_bench_on_a_converted_checkpoint(converted, tmp_path, capsys):
  """mode=bench (smoke, no timing asserts): every section measured, transformers
  timed beside ours, and the reward's one pass equal to the reference algorithm."""
  from gvu_jax import bench
  r = bench.run(_bench_config(converted), str(tmp_path))
  assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(r))
  s = r["sampler"]["2"]
  assert s["rows"] == 4 and s["seconds"] > 0 and s["speedup_vs_transformers"] > 0
  assert r["sampler_speedup_vs_transformers"] == s["speedup_vs_transformers"]
  w = r["reward"]
  assert w["reference_forwards"] == w["reference_forwards_timed"] == 6
  assert w["max_abs_diff_vs_reference"] < 1e-5
  assert r["reward_speedup_vs_reference"] == w["speedup_vs_reference"] > 0
  g = r["grpo"]
  assert g["lora"] and g["rows"] == 8 and 0 < g["mfu"] and g["model_tflop"] > 0
  assert all(x["peak_bytes"] > 0 for x in (s, w, g, r["vq_decode"]))
  assert "| sampler (2), 2 prompts x G=1, CFG 5, 4 rows |" in capsys.readouterr().out


def test_bench_analysis_only_compiles_without_running(converted, tmp_path):
  from gvu_jax import bench
  c = _bench_config(converted, analysis_only=True)
  c.bench.machine = "h100"
  r = bench.run(c, str(tmp_path))
  rollout = r["sampler"]["rollout"]      # the recipe's GvU rollout: 2 prompts x G=4
  assert (rollout["prompts"], rollout["group_size"], rollout["rows"]) == (2, 4, 8)
  assert "seconds" not in rollout and rollout["peak_bytes"] > 0
  assert r["largest_peak_bytes"] == max(
      x["peak_bytes"] for x in (rollout, r["vq_decode"], r["reward"], r["grpo"]))
  # on paper: the rollout reads weights + KV cache image_tokens times at 3.35 TB/s
  e, m = r["estimate"], bench.model_block(c)
  weights, kv, _ = bench.sampler_step_bytes(m, 8, c.bench.prompt_tokens)
  assert r["mesh"] == "data=1 fsdp=1 tensor=1" and e["chips"] == 1
  assert e["rollout_s"] == pytest.approx(m.image_tokens * (weights + kv) / 3350e9)
  assert e["step_s"] == pytest.approx(e["rollout_s"] + e["reward_s"] + e["update_s"])
  assert e["images_per_s"] == pytest.approx(8 / e["step_s"]) and e["fits"]
  c.bench.machine = "tpu9"
  with pytest.raises(InputError, match=r"bench.machine='tpu9': expected one of \['', 'v5e'"):
    config_check.check(c)


def test_bench_needs_janus_weights(converted, tmp_path):
  from gvu_jax import bench
  c = _bench_config(converted)
  c.update(checkpoint="", random_init=False)
  with pytest.raises(InputError, match="mode=bench needs weights: --config.random_init=True"):
    bench.run(c, str(tmp_path))
  synthetic = subprocess.run(
      [sys.executable, "-m", "gvu_jax.main", "--config=configs/synthetic.py:mini",
       "--config.mode=bench", f"--workdir={tmp_path}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert synthetic.returncode == 2
  assert synthetic.stderr.strip().splitlines()[-1].startswith(
      "error: mode=bench runs on a Janus recipe")
