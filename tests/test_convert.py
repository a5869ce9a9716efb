"""The Janus converter (both published layouts), its presets and numerical parity
with transformers' JanusForConditionalGeneration."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gvu_jax.infra.errors import InputError  # noqa: E402
from gvu_jax.interop import convert  # noqa: E402
from gvu_jax.interop.convert import parity, store  # noqa: E402
from gvu_jax.models import build, presets  # noqa: E402
from gvu_jax.rl.sampling import Sampler, SamplingConfig  # noqa: E402
from helpers_janus import BOI, BOS, IMAGE_TOKEN, PAD, ROOT, load_model  # noqa: E402


@pytest.mark.parametrize("layout", ["transformers", "original"])
def test_parity_with_transformers(layout, sources, converted, hf):
  assert len(convert.find_shards(epath.Path(sources[layout]))[1]) >= 2
  model = load_model(converted[layout])
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
  model = load_model(converted["transformers"])
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
  monkeypatch.setattr(store, "SAVE_GROUP_BYTES", 20_000)   # many groups, even this small
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


@pytest.mark.slow
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
  shards = [epath.Path(path)]
  if expected is None:
    with pytest.raises(InputError, match=f"{tmp_path}: no floating-point tensor .* pass --dtype"):
      convert.auto_dtype(shards)
  else:
    assert convert.auto_dtype(shards) == expected


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
  a = convert.read_model_config(epath.Path(sources["transformers"]))
  b = convert.read_model_config(epath.Path(sources["original"]))
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
  m = convert.read_model_config(epath.Path(tmp_path), model="janus_pro_7b")
  assert m.lm.hidden == 4096 and m.image_tokens == 576
  with pytest.raises(InputError, match="--model=janus_pro_1b expects lm="):
    convert.read_model_config(epath.Path(tmp_path), model="janus_pro_1b")


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


@pytest.mark.parametrize("name, size, kept", [
    ("config.json", 10, True), ("modeling_xomni.py", 10, True), ("generation_config.json", 10, True),
    ("merges.txt", 10, True), ("LICENSE", 10, True), ("README.md", 10, True),
    ("model.safetensors", 10, False), ("model-00001-of-00002.safetensors", 10, False),
    ("model.safetensors.index.json", 10, False), ("pytorch_model.bin.index.json", 10, False),
    ("pytorch_model.bin", 10, False), ("vit.pt", 10, False), ("projector.pth", 10, False),
    ("flax_model.msgpack", 10, False), (".gitattributes", 10, False),
    ("big.json", 65 << 20, False),
])
def test_a_conversion_keeps_the_releases_own_files_but_not_its_weights(tmp_path, name, size,
                                                                      kept):
  from gvu_jax.interop.convert import write
  src = tmp_path / "src"
  src.mkdir()
  with open(src / name, "wb") as f:
    f.truncate(size)
  (src / "sub").mkdir()   # folders are not release files
  write._keep_release_files(epath.Path(src), epath.Path(tmp_path / "release"))
  assert sorted(os.listdir(tmp_path / "release")) == ([name] if kept else [])


@pytest.mark.parametrize("content, message", [
    (None, r"cfg.json: not found"),
    ("dir", r"cfg.json: a directory, expected a JSON file"),
    ("{", r"cfg.json: not valid JSON"),
    (b"\xff\xfe", r"cfg.json: not valid JSON"),
    ("[1, 2]", r"cfg.json: holds a JSON list, expected an object"),
    ("3", r"cfg.json: holds a JSON int, expected an object"),
])
def test_a_json_file_that_is_no_object_is_one_line(tmp_path, content, message):
  from gvu_jax.interop.convert.source import read_json_object
  path = tmp_path / "cfg.json"
  if content == "dir":
    path.mkdir()
  elif isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    path.write_text(content)
  with pytest.raises(InputError, match=message) as e:
    read_json_object(epath.Path(path))
  assert "\n" not in str(e.value)


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
