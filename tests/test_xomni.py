"""X-Omni (models/xomni.py) against an oracle built here from transformers' own
Qwen2 modules: the reference algorithm of X-Omni's forward written plainly
(separate text / multimodal embeddings, adapter and head layers that update only
multimodal positions, lm_norm / mm_norm per position, lm_head / mm_head)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.qwen2 import modeling_qwen2 as qwen2   # noqa: E402

from gvu_jax.models import build, presets  # noqa: E402
from gvu_jax.models.umm import causal_mask, image_logits, positions_from_valid  # noqa: E402

VOCAB, MM_VOCAB, IMAGE_VOCAB = 96, 40, 32
LAYERS, ADAPTERS, HEAD_LAYERS = 5, 1, 2


def tiny_model_config():
  return presets.xomni_config(
      lm=dict(vocab_size=VOCAB, hidden=32, layers=LAYERS, heads=4, kv_heads=2, intermediate=48,
              rope_theta=10000.0, norm_eps=1e-6, max_position=256),
      mm_vocab_size=MM_VOCAB, image_vocab_size=IMAGE_VOCAB, num_mm_adap_layers=ADAPTERS,
      num_mm_head_layers=HEAD_LAYERS, image_grid=(2, 3), dtype="float32")


class Oracle(torch.nn.Module):
  """X-Omni's forward over unified ids, one sequence, from transformers' Qwen2 parts."""

  def __init__(self):
    super().__init__()
    c = qwen2.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                          num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                          rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=256)
    c._attn_implementation = "eager"
    self.c = c
    self.lm_embed_tokens = torch.nn.Embedding(VOCAB, 32)
    self.mm_embed_tokens = torch.nn.Embedding(MM_VOCAB, 32)
    self.layers = torch.nn.ModuleList(qwen2.Qwen2DecoderLayer(c, i) for i in range(LAYERS))
    self.lm_norm = qwen2.Qwen2RMSNorm(32, eps=1e-6)
    self.mm_norm = qwen2.Qwen2RMSNorm(32, eps=1e-6)
    self.rotary = qwen2.Qwen2RotaryEmbedding(c)
    self.lm_head = torch.nn.Linear(32, VOCAB, bias=False)
    self.mm_head = torch.nn.Linear(32, MM_VOCAB, bias=False)
    for p in self.parameters():   # away from the identity init of norms and zero biases
      torch.nn.init.normal_(p, std=0.3)

  def forward(self, ids):
    is_mm = ids >= VOCAB
    x = torch.where(is_mm[..., None], self.mm_embed_tokens((ids - VOCAB).clamp(min=0)),
                    self.lm_embed_tokens(ids.clamp(max=VOCAB - 1)))
    t = ids.shape[1]
    pos = torch.arange(t)[None]
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    cos_sin = self.rotary(x, pos)
    for i, layer in enumerate(self.layers):
      out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
      out = out[0] if isinstance(out, tuple) else out
      lm_layer = ADAPTERS <= i < LAYERS - HEAD_LAYERS
      x = out if lm_layer else torch.where(is_mm[..., None], out, x)
    h = torch.where(is_mm[..., None], self.mm_norm(x), self.lm_norm(x))
    return self.lm_head(h), self.mm_head(h)[..., :IMAGE_VOCAB]


def oracle_params(oracle):
  """The oracle's weights in gvu_jax's parameter tree."""
  sd = {k: v.detach().numpy() for k, v in oracle.state_dict().items()}
  layers = {}
  for i in range(LAYERS):
    p = f"layers.{i}."
    attn = {n: {"kernel": sd[f"{p}self_attn.{n}_proj.weight"].T} for n in "qkvo"}
    for n in "qkv":
      attn[n]["bias"] = sd[f"{p}self_attn.{n}_proj.bias"]
    layers[i] = {"input_norm": {"scale": sd[f"{p}input_layernorm.weight"]},
                 "post_attn_norm": {"scale": sd[f"{p}post_attention_layernorm.weight"]},
                 "attn": attn,
                 "mlp": {n: {"kernel": sd[f"{p}mlp.{n}_proj.weight"].T}
                         for n in ("gate", "up", "down")}}
  return {"lm": {"embed": {"embedding": sd["lm_embed_tokens.weight"]},
                 "mm_embed": {"embedding": sd["mm_embed_tokens.weight"]},
                 "layers": layers, "final_norm": {"scale": sd["lm_norm.weight"]},
                 "mm_norm": {"scale": sd["mm_norm.weight"]},
                 "lm_head": {"kernel": sd["lm_head.weight"].T},
                 "mm_head": {"kernel": sd["mm_head.weight"].T}}}


def assert_logits_match(model, oracle, ids):
  """Text and image logits of `ids` (unified ids, [B, T]) against the oracle's;
  returns the oracle's image logits."""
  with torch.no_grad():
    want_text, want_image = (t.numpy() for t in oracle(torch.tensor(ids)))
  valid = jnp.ones(ids.shape, bool)
  hidden, _ = model.lm(model.lm.embed_tokens(jnp.asarray(ids)), positions_from_valid(valid),
                       causal_mask(valid))
  np.testing.assert_allclose(model.text_head(hidden), want_text, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(model.image_head(hidden), want_image, atol=1e-4, rtol=1e-4)
  return want_image


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  oracle = Oracle().eval()
  graphdef, params = build.abstract(tiny_model_config())
  ours = oracle_params(oracle)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, ours)
  return oracle, nnx.merge(graphdef, jax.tree.map(jnp.asarray, ours))


def test_text_and_image_logits_match_the_oracle(pair):
  oracle, model = pair
  rng = np.random.default_rng(0)
  text = rng.integers(0, VOCAB, (2, 5))
  image = VOCAB + rng.integers(0, IMAGE_VOCAB, (2, 6))
  ids = np.concatenate([text, image, text[:, :3]], axis=1)   # text, an image, text after it
  want_image = assert_logits_match(model, oracle, ids)
  # the teacher-forced path the GRPO loss uses: prompt, then image codes
  got = image_logits(model, jnp.asarray(text), jnp.ones(text.shape, bool),
                     jnp.asarray(image - VOCAB))
  np.testing.assert_allclose(got, want_image[:, 4:10], atol=1e-4, rtol=1e-4)


def test_adapter_layers_leave_text_positions_alone(pair):
  """A text-only sequence never reads the multimodal table, norm or head: its
  text logits equal a plain Qwen2 stack run over the middle layers only."""
  oracle, model = pair
  ids = torch.tensor(np.random.default_rng(1).integers(0, VOCAB, (1, 7)))
  with torch.no_grad():
    x = oracle.lm_embed_tokens(ids)
    pos = torch.arange(7)[None]
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    for layer in oracle.layers[ADAPTERS:LAYERS - HEAD_LAYERS]:
      out = layer(x, attention_mask=mask, position_ids=pos,
                  position_embeddings=oracle.rotary(x, pos))
      x = out[0] if isinstance(out, tuple) else out
    want = oracle.lm_head(oracle.lm_norm(x)).numpy()
  valid = jnp.ones((1, 7), bool)
  hidden, _ = model.lm(model.lm.embed_tokens(jnp.asarray(ids.numpy())),
                       positions_from_valid(valid), causal_mask(valid))
  np.testing.assert_allclose(model.text_head(hidden), want, atol=1e-4, rtol=1e-4)


# --- a tiny X-Omni release, converted and run ------------------------------------

import json                     # noqa: E402
import os                       # noqa: E402
import subprocess               # noqa: E402

from gvu_jax.interop import convert  # noqa: E402
import helpers_xomni            # noqa: E402
from helpers_run import recipe_command, run_two_gvu_steps   # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_release(oracle, directory, extra_words=()):
  """The oracle as an X-Omni release directory."""
  config = {"model_type": "x-omni", "vocab_size": VOCAB, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256, "tie_word_embeddings": False,
            "mm_vocab_size": MM_VOCAB, "image_vocab_size": IMAGE_VOCAB,
            "num_mm_adap_layers": ADAPTERS, "num_mm_head_layers": HEAD_LAYERS}
  tensors = {(k if k.startswith(("lm_head", "mm_head")) else "model." + k): v.numpy()
             for k, v in oracle.state_dict().items() if not k.startswith("rotary")}
  helpers_xomni.write_release(directory, config, tensors, extra_words=extra_words)


def _float32(m):
  m = m.copy_and_resolve_references()
  m.dtype = "float32"   # computed in float32 (a release computes in bfloat16)
  return m


@pytest.fixture(scope="module")
def converted(pair, tmp_path_factory):
  oracle, _ = pair
  src = str(tmp_path_factory.mktemp("xomni_src"))
  write_release(oracle, src)
  dst = str(tmp_path_factory.mktemp("xomni_dst") / "ckpt")
  m = convert.convert(src, dst, dtype="float32", log=lambda *_: None)
  return src, dst, m


def test_conversion_reads_the_release_and_matches_the_oracle(pair, converted):
  oracle, _ = pair
  src, dst, m = converted
  assert m.family == "xomni" and m.lm.qkv_bias and m.mm_vocab_size == MM_VOCAB
  _, params = convert.load(dst, dtype="float32")
  graphdef, _ = build.abstract(_float32(m))
  model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
  ids = np.concatenate([np.arange(6, 11), VOCAB + np.arange(6)])[None]
  assert_logits_match(model, oracle, ids)


def test_conversion_refuses_a_tensor_of_the_wrong_shape(pair, tmp_path):
  import safetensors.torch
  oracle, _ = pair
  write_release(oracle, str(tmp_path / "src"))
  path = tmp_path / "src" / "model.safetensors"
  state = safetensors.torch.load_file(str(path))
  state["mm_head.weight"] = state["mm_head.weight"][:-1].contiguous()
  safetensors.torch.save_file(state, str(path))
  with pytest.raises(Exception, match=r"tensor mm_head.weight has shape \(39, 32\), "
                                      r"expected \(40, 32\)"):
    convert.convert(str(tmp_path / "src"), str(tmp_path / "dst"), dtype="float32",
                    log=lambda *_: None)
  assert not (tmp_path / "dst").exists()


@pytest.mark.slow
def test_gvu_with_the_token_space_reward_and_eval_run_on_a_tiny_xomni(pair, converted,
                                                                     tmp_path):
  """configs/xomni_en.py end to end on the tiny conversion: 2 GvU steps (the reward
  reads the generated tokens themselves), the policy exported (both formats),
  then GenEval++-layout images."""
  _, dst, _ = converted
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("w5 w6 w7\nw8 w9\nw10 w11\n")
  args = recipe_command("configs/xomni_en.py", dst, prompts, tmp_path / "run",
                        "--config.model_options.image_grid=(2, 3)",
                        "--config.gvu.lr=3e-2", "--config.gvu.schedule=constant")   # adapters far from 0
  run_two_gvu_steps(args, tmp_path / "run")
  check_the_export_round_trip(pair, converted, tmp_path)
  plus = tmp_path / "plus.jsonl"
  plus.write_text('{"tag": "counting", "prompt": "w5 w6"}\n{"tag": "colors", "prompt": "w7"}\n')
  evaluated = subprocess.run(args + ["--config.mode=eval", f"--config.eval.prompts={plus}",
                                     "--config.eval.layout=geneval_plus",
                                     "--config.eval.batch_size=2"],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  for stage in ("base", "gvu"):
    out = tmp_path / "run" / "eval" / stage / "geneval_plus"
    assert sorted(os.listdir(out / "sample_0")) == ["0.npz", "1.npz"]   # token grids
    with np.load(out / "sample_0" / "1.npz") as saved:
      grid, prompt = saved["tokens"], str(saved["prompt"])
    assert grid.shape == (2, 3) and 0 <= grid.min() and grid.max() < IMAGE_VOCAB
    assert prompt == "w7"


def check_the_export_round_trip(pair, converted, tmp_path):
  """The policy exported in the release's layout holds the release's files and
  names and converts back to exactly the policy; its PEFT adapters, injected into
  the release's modules (the oracle), give the policy's logits."""
  import copy
  import peft
  import safetensors.numpy
  from gvu_jax.interop import export
  src, _, _ = converted
  policy = export.export(str(tmp_path / "run"), str(tmp_path / "release"),
                         log=lambda *_: None)
  out = tmp_path / "release"
  assert json.loads((out / "config.json").read_text()) == json.loads(
      open(os.path.join(src, "config.json")).read())
  assert (out / "tokenizer.json").read_bytes() == open(os.path.join(src, "tokenizer.json"),
                                                       "rb").read()
  release = safetensors.numpy.load_file(os.path.join(src, "model.safetensors"))
  exported = export.read_sharded(out)
  assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in release.items()}
  assert export.check(str(out), policy)["ok"]
  convert.convert(str(out), str(tmp_path / "back"), dtype="float32", log=lambda *_: None)
  _, back = convert.load(str(tmp_path / "back"))
  jax.tree.map(np.testing.assert_array_equal, back, policy.params())

  export.export(str(tmp_path / "run"), str(tmp_path / "peft"), fmt="peft", log=lambda *_: None)
  adapters = safetensors.numpy.load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
  config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
  release_model = torch.nn.Module()   # the oracle under the release's names: model.layers...
  release_model.model = copy.deepcopy(pair[0])
  peft.inject_adapter_in_model(peft.LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                               target_modules=config["target_modules"]),
                               release_model)
  prefix = "base_model.model."
  result = peft.set_peft_model_state_dict(
      release_model, {k[len(prefix):]: torch.tensor(v) for k, v in adapters.items()})
  assert not result.unexpected_keys
  ids = np.concatenate([np.arange(6, 11), VOCAB + np.arange(6)])[None]
  graphdef, _ = build.abstract(_float32(policy.model))
  model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, policy.params()))
  assert_logits_match(model, release_model.model, ids)
  base = nnx.merge(graphdef, jax.tree.map(jnp.asarray, oracle_params(pair[0])))
  with pytest.raises(AssertionError):   # GvU moved the policy away from the base
    assert_logits_match(base, release_model.model, ids)


def test_render_writes_pngs_beside_the_token_grids(tmp_path):
  """evaluation/render_xomni.py with a stand-in decoder (the real one is X-Omni's
  FLUX): a PNG per grid, DPG-Bench's grids tiled 2x2, finished PNGs kept."""
  from PIL import Image
  from gvu_jax.data.prompt_files import Prompt
  from gvu_jax.evaluation import benchmark_images, render_xomni
  prompts = [Prompt("w5 w6", "colors", "a"), Prompt("w7", "counting", "b")]
  grids = [np.full((2, 3), k, np.int32) for k in range(3)]
  benchmark_images.GenevalPlusLayout(str(tmp_path / "plus"), 1, prompts, "npz").write(
      1, prompts[1], grids[:1])
  benchmark_images.DpgBenchLayout(str(tmp_path / "dpg"), 3, prompts, "npz").write(
      0, prompts[0], grids)
  seen = []

  def render(tokens, prompt):   # a flat colour from the grid's value
    seen.append(prompt)
    return Image.new("RGB", (4, 4), (40 * (int(tokens[0, 0]) + 1), 0, 0))

  assert render_xomni.render_all(str(tmp_path), render, log=lambda *_: None) == 2
  assert sorted(seen) == ["w5 w6"] * 3 + ["w7"]
  tile = np.asarray(Image.open(tmp_path / "dpg" / "a.png"))
  assert tile.shape == (8, 8, 3)
  assert [tile[0, 0, 0], tile[0, 4, 0], tile[4, 0, 0], tile[4, 4, 0]] == [40, 80, 120, 0]
  assert np.asarray(Image.open(tmp_path / "plus" / "sample_0" / "1.png"))[0, 0, 0] == 40
  assert render_xomni.render_all(str(tmp_path), render, log=lambda *_: None) == 0   # resumes
  assert not list(tmp_path.rglob("*.partial"))


def test_token_space_reward_is_the_oracles_likelihood_of_the_prompt(pair, converted):
  """The GvU reward on X-Omni: the query "<SOM>2 3<IMAGE>" + the generated codes +
  "<EOM>" + the question, the prompt as the answer, scored in one pass; equal to
  the oracle's text-mode log-likelihood of each prompt token."""
  from gvu_jax.rl import reward
  from gvu_jax.text import janus as janus_text, xomni as xomni_text
  oracle, model = pair
  src, _, _ = converted
  templates = xomni_text.XOmniTemplates(janus_text.load_tokenizer(src), (2, 3), 4, VOCAB)
  texts = ["w5 w6 w7", "w8"]
  query = templates.understanding(texts).arrays()
  codes = np.random.default_rng(2).integers(0, IMAGE_VOCAB, (2, 6))
  rewards, token_logp = reward.intrinsic_reward(
      model, jnp.asarray(codes), {k: jnp.asarray(v) for k, v in query.items()}, "geo_mean_prob")
  for b, text in enumerate(texts):
    ids = query["ids"][b].copy()
    ids[query["image_slots"][b]] = VOCAB + codes[b]
    n = len(text.split())
    start = query["answer_start"]
    with torch.no_grad():
      logits = oracle(torch.tensor(ids[None, :start + n]))[0][0]
    want = torch.log_softmax(logits, -1)[np.arange(start - 1, start + n - 1),
                                         torch.tensor(ids[start:start + n])].numpy()
    np.testing.assert_allclose(token_logp[b, :n], want, atol=1e-4)
    np.testing.assert_allclose(rewards[b], np.exp(want.mean()), rtol=1e-4)


# --- the SigLIP-VQ image tokenizer, against X-Omni's own modules ------------------

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "xomni_siglip_vq.npz")
TINY_SIGLIP_VQ = dict(patch_size=4, width=32, layers=2, heads=2, mlp_dim=128, pos_grid=16,
                      codebook_size=64, codebook_dim=16)


def fixture_encoder():
  """The tokenizer with the fixture's weights (tests/fixtures/xomni_reference.py
  wrote them, and what X-Omni's modules computed, from the GvU reference)."""
  from gvu_jax.models import siglip_vq
  data = np.load(FIXTURE)
  split = lambda prefix: {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
  cfg = siglip_vq.SiglipVQConfig(**TINY_SIGLIP_VQ)
  params = siglip_vq.params_from_torch(split("vit."), split("vqproj."), cfg)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: siglip_vq.SiglipVQEncoder(cfg, rngs=nnx.Rngs(0))))
  return data, nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def test_siglip_vq_tokens_match_xomnis_own_modules():
  data, encoder = fixture_encoder()
  pixels = jnp.asarray(data["input"].transpose(0, 2, 3, 1))   # 24 x 36: the 16 x 16 table resized
  features, (h, w) = encoder.features(pixels)
  assert (h, w) == (6, 9)
  np.testing.assert_allclose(features, data["features"], atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(encoder.encode(pixels), data["tokens"])


def test_siglip_vq_weights_are_checked():
  from gvu_jax.infra.errors import InputError
  from gvu_jax.models import siglip_vq
  data = np.load(FIXTURE)
  vit = {k[4:]: data[k] for k in data.files if k.startswith("vit.")}
  proj = {k[7:]: data[k] for k in data.files if k.startswith("vqproj.")}
  cfg = siglip_vq.SiglipVQConfig(**TINY_SIGLIP_VQ)
  with pytest.raises(InputError, match=r"^siglip-vq: missing tensor quant_conv.bias$"):
    siglip_vq.params_from_torch(vit, {k: v for k, v in proj.items() if k != "quant_conv.bias"},
                                cfg)
  with pytest.raises(InputError, match=r"tensor pos_embed has shape \(1, 256, 32\), expected "
                                       r"\(1, 1024, 32\)"):
    siglip_vq.params_from_torch(vit, proj, siglip_vq.SiglipVQConfig(
        **dict(TINY_SIGLIP_VQ, pos_grid=32)))


def test_anyres_preprocess_sizes():
  from PIL import Image
  from gvu_jax.infra.errors import InputError
  from gvu_jax.models import siglip_vq
  make = lambda w, h: Image.new("RGB", (w, h), (255, 0, 0))
  assert siglip_vq.preprocess(make(576, 576)).shape == (576, 576, 3)    # kept: 36 x 36 tokens
  assert siglip_vq.preprocess(make(200, 300)).shape == (576, 384, 3)    # short side up to 384
  assert siglip_vq.preprocess(make(3000, 1500)).shape == (576, 1152, 3)  # long side down to 1152
  np.testing.assert_allclose(siglip_vq.preprocess(make(400, 400))[0, 0], [1.0, -1.0, -1.0])
  with pytest.raises(InputError, match=r"image 100x400: X-Omni needs a short side of at least"):
    siglip_vq.preprocess(make(100, 400))


def write_release_with_image_tokenizer(oracle, src, extra_words=(), codebook=None):
  """A release whose config.json names its tokenizer files (vision_config.encoder:
  siglip_path, projector_path, torch state dicts), the fixture's weights in them
  (the first `codebook` codebook entries only, when given)."""
  data = dict(np.load(FIXTURE))
  sizes = dict(TINY_SIGLIP_VQ)
  if codebook:
    data["vqproj.quantize.embedding.weight"] = data["vqproj.quantize.embedding.weight"][:codebook]
    sizes["codebook_size"] = codebook
  write_release(oracle, str(src), extra_words)
  for name, prefix in (("vit.pt", "vit."), ("projector.pt", "vqproj.")):
    torch.save({k[len(prefix):]: torch.tensor(v) for k, v in data.items()
                if k.startswith(prefix)}, str(src / name))
  config = json.loads((src / "config.json").read_text())
  config["vision_config"] = {"encoder": dict(
      sizes, siglip_name="tiny", siglip_path="vit.pt", projector_path="projector.pt",
      z_channels=32)}
  (src / "config.json").write_text(json.dumps(config))


def test_conversion_brings_the_image_tokenizer_when_the_release_has_it(pair, tmp_path):
  """A release that names its image tokenizer files: converted beside the model,
  and the loaded tokenizer gives X-Omni's own token ids for the fixture image."""
  from gvu_jax.infra.errors import InputError
  oracle, _ = pair
  data = np.load(FIXTURE)
  src = tmp_path / "src"
  write_release_with_image_tokenizer(oracle, src)
  m = convert.convert(str(src), str(tmp_path / "dst"), dtype="float32", log=lambda *_: None)
  assert m.image_encoder.width == 32
  encoder = convert.load_image_tokenizer(str(tmp_path / "dst"))
  pixels = jnp.asarray(data["input"].transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(encoder.encode(pixels), data["tokens"])

  (src / "projector.pt").unlink()   # a release without it: the model converts, with a note
  notes = []
  convert.convert(str(src), str(tmp_path / "dst2"), dtype="float32", log=notes.append)
  assert any("image tokenizer not converted" in n for n in notes)
  with pytest.raises(InputError, match="holds no image tokenizer"):
    convert.load_image_tokenizer(str(tmp_path / "dst2"))


def test_benchmark_questions_are_read_as_the_oracle_reads_them(pair, tmp_path):
  """eval.understanding on X-Omni: each photo through X-Omni's any-resolution
  transform and its SigLIP-VQ tokens (a grid of the photo's own shape), the
  question in ChatML after them; rows of different grids batched and padded.
  Every option's log-probability at the answer position equals the oracle's on
  the row alone, unpadded, and so does the greedy reply (generate path)."""
  import types
  import ml_collections
  from PIL import Image
  from gvu_jax.data.suites import Question
  from gvu_jax.evaluation import protocols, understanding
  from gvu_jax.text import janus as janus_text, xomni as xomni_text
  oracle, model = pair
  src = tmp_path / "src"
  words = ("Yes", "No", "A", "B", "C", "D", "24", "34", "38")   # answers, grid sides
  write_release_with_image_tokenizer(oracle, src, extra_words=words,
                                     codebook=IMAGE_VOCAB)   # the model reads every token
  dst = str(tmp_path / "dst")
  m = convert.convert(str(src), dst, dtype="float32", log=lambda *_: None)
  tokenizer = janus_text.load_tokenizer(dst)
  templates = xomni_text.XOmniTemplates(tokenizer, (2, 3), 4, VOCAB)
  images = understanding.XOmniImages(types.SimpleNamespace(
      config=ml_collections.ConfigDict({"checkpoint": dst}), model=m))
  rng = np.random.default_rng(3)
  paths = []
  for i, (h, w) in enumerate([(40, 56), (64, 40)]):   # grids 24 x 34 and 38 x 24
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(paths[-1])
  questions = {
      "yes/no": ([Question("t", "t", "0", paths[0], "w5 w6?", (), "yes", "g", "", "q:0"),
                  Question("t", "t", "1", paths[1], "w7", (), "no", "g", "", "q:1")],
                 understanding.YES_NO_WORDS),
      "choice": ([Question("t", "t", "2", paths[1], "w8?", ("w9", "w10", "w11 w12", "w13"), "B",
                           "g", "", "q:2"),
                  Question("t", "t", "3", paths[0], "w9", ("w1", "w2", "w3", "w4"), "D", "g", "",
                           "q:3")], [(l,) for l in "ABCD"])}
  encoder = convert.load_image_tokenizer(dst)
  graphdef, params = nnx.split(model)
  for name, (qs, words) in questions.items():
    table, mask = understanding.answer_table(tokenizer, words)
    texts = [protocols.question_text(q, "vlmevalkit") for q in qs]
    ids, valid, slots, codes = images.batch(templates, texts, [images.read(q) for q in qs])
    ours, _ = understanding.make_scorer(graphdef, table, mask)(params, ids, valid, slots, codes)
    steps = 3 if name == "yes/no" else 0   # the generate path once: it reads no options
    if steps:
      replies, first, _ = (np.asarray(x) for x in understanding.make_scorer(
          graphdef, table, mask, reply_tokens=steps)(params, ids, valid, slots, codes))
      np.testing.assert_allclose(first, ours, atol=1e-5)
    for b, q in enumerate(qs):
      pixels = images.pixels(q.image)
      grid = np.asarray(encoder.encode(jnp.asarray(pixels)[None]))[0]
      h, w = grid.shape
      assert (h, w) == (pixels.shape[0] // 4, pixels.shape[1] // 4) and 24 in (h, w)
      head = tokenizer.encode(f"<|im_start|>system\n{xomni_text.QWEN_SYSTEM_PROMPT}<|im_end|>\n"
                              f"<|im_start|>user\n<SOM>{h} {w}<IMAGE>").ids
      tail = tokenizer.encode(f"\n{texts[b]}<|im_end|>\n<|im_start|>assistant\n").ids
      eom = tokenizer.token_to_id("<EOM>")
      unified = head + [VOCAB + c for c in grid.reshape(-1)] + [eom] + tail
      row = ids[b][valid[b]].copy()
      row[slots[b][valid[b]]] = VOCAB + codes[b][:h * w]
      assert row.tolist() == unified, name
      with torch.no_grad():
        logits = oracle(torch.tensor([unified]))[0][0, -1]
      logp = torch.log_softmax(logits.double(), -1).numpy()
      want = [np.logaddexp.reduce(logp[t[m]]) for t, m in zip(table, mask)]
      np.testing.assert_allclose(ours[b], want, atol=1e-4, err_msg=name)
      # the generate path's greedy reply: the oracle's argmax, one full pass a token
      greedy = list(unified)
      for _ in range(steps):
        with torch.no_grad():
          greedy.append(int(oracle(torch.tensor([greedy]))[0][0, -1].argmax()))
      if steps:
        assert replies[b].tolist() == greedy[len(unified):], name
