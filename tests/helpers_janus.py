"""Tiny Janus checkpoints for the tests, in both published layouts: a random
transformers JanusForConditionalGeneration saved as transformers saves it
(safetensors) and as the original deepseek release is laid out
(pytorch_model*.bin with the original names), plus their conversions. The
fixtures (tests/conftest.py: hf, sources, converted) are
module-scoped: each test file that uses them builds them once."""

import json
import os
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gvu_jax.interop import convert
from gvu_jax.interop.convert import parity  # noqa: E402
from gvu_jax.models import build, presets  # noqa: E402

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
  from gvu_jax.text import janus as jt
  jt.write_stand_in_tokenizer(directory, {jt.PAD: PAD, jt.BOS: BOS, jt.EOS: 2,
                                          jt.IMG: IMAGE_TOKEN, jt.BOI: BOI, jt.EOI: 102}, 128)


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


def build_sources(hf, root):
  """The same tiny model in both layouts, sharded, under `root`."""
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


def convert_all(sources, new_dir):
  """Each source converted (float32) into new_dir(layout) -> {layout: dst}."""
  out = {}
  for layout, src in sources.items():
    dst = new_dir() / layout
    convert.convert(str(src), str(dst), dtype="float32", log=lambda *_: None)
    out[layout] = dst
  return out

def load_model(dst):
  m, params = convert.load(str(dst), dtype="float32")
  graphdef, _ = build.abstract(m)
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
