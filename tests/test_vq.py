"""The VQ-16 tokenizer against transformers' JanusVQVAE (tiny random model, fp32)."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from gvu_jax.models import vq

# GroupNorm(32) needs widths that are multiples of 32. Three stages: a plain
# one, one that widens (nin_shortcut), the lowest with attention; 32px -> 8x8 codes.
TINY_HF = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
               channel_multiplier=[1, 2, 2], num_res_blocks=1, num_patches=8,
               projection_dim=16, image_token_embed_dim=16)


@pytest.fixture(scope="module")
def tiny():
  torch.manual_seed(0)
  hf = JanusVQVAE(JanusVQVAEConfig(**TINY_HF)).eval()
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = vq.VQConfig.from_hf(hf.config.to_dict())
  graphdef, state = nnx.split(vq.model_from_params(cfg, vq.params_from_torch(tensors, cfg)))
  return hf, tensors, cfg, graphdef, state


def _abstract_params(cfg):
  model = nnx.eval_shape(lambda: vq.VQModel(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_from_hf():
  assert vq.VQConfig.from_hf(JanusVQVAEConfig().to_dict()) == vq.VQConfig()
  cfg = vq.VQConfig.from_hf(TINY_HF, dtype="bfloat16")
  assert cfg.channel_multiplier == (1, 2, 2) and cfg.dtype == "bfloat16"
  with pytest.raises(ValueError, match="double_latent"):
    vq.VQConfig.from_hf({**TINY_HF, "double_latent": True})


def test_matches_transformers(tiny):
  hf, _, cfg, graphdef, state = tiny
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    out = hf.encode(_nchw(pixels))
    hf_codes = out.image_tokens.view(2, -1)

  encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
  decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c))
  codes = encode(state, jnp.asarray(pixels))
  assert codes.shape == (2, 64) and codes.dtype == jnp.int32
  np.testing.assert_array_equal(codes, hf_codes.numpy())
  assert len(np.unique(codes)) > 20

  # Decode the transformers codes and one random row.
  rand = torch.randint(0, cfg.num_embeddings, (1, 64))
  all_codes = torch.cat([hf_codes, rand])
  with torch.no_grad():
    want = hf.decode(all_codes).permute(0, 2, 3, 1).numpy()
  got = np.asarray(decode(state, jnp.asarray(all_codes.numpy(), jnp.int32)))
  assert got.shape == (3, 32, 32, 3)
  diff = np.abs(got - want).max()
  assert diff <= 1e-4, diff


def test_encode_l2_norm_gives_original_codes(tiny):
  """encode_l2_norm=True: the original Janus quantizer's cosine argmin."""
  hf, _, cfg, graphdef, state = tiny
  z = torch.randn(2, 16, cfg.embed_dim) * 0.05
  with torch.no_grad():
    zn = F.normalize(z.reshape(-1, cfg.embed_dim), dim=-1)
    e = F.normalize(hf.quantize.embedding.weight, dim=-1)
    d = (zn ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * zn @ e.T
    want = d.argmin(1).view(2, -1).numpy()
    plain = hf.quantize(z.view(2, 4, 4, -1).permute(0, 3, 1, 2))[2].view(2, -1).numpy()
  quantize = nnx.merge(graphdef, state).quantize
  np.testing.assert_array_equal(quantize.encode(jnp.asarray(z.numpy())), plain)
  quantize.l2_norm = True
  np.testing.assert_array_equal(quantize.encode(jnp.asarray(z.numpy())), want)
  assert (want != plain).any()


def test_decode_needs_square_grid(tiny):
  _, _, _, graphdef, state = tiny
  with pytest.raises(ValueError, match="square"):
    nnx.merge(graphdef, state).decode(jnp.zeros((1, 60), jnp.int32))


def test_params_tree_and_shapes(tiny):
  hf, tensors, cfg, graphdef, state = tiny
  assert vq.expected_torch_shapes(cfg) == {k: v.shape for k, v in tensors.items()}
  params = vq.params_from_torch(tensors, cfg)
  model_params = _abstract_params(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(model_params)
  shape = lambda x: tuple(x.shape)
  assert jax.tree.map(shape, params) == jax.tree.map(shape, model_params)


def test_real_size_without_allocation():
  with torch.device("meta"):
    hf = JanusVQVAE(JanusVQVAEConfig())
  shapes = vq.expected_torch_shapes(vq.VQConfig())
  assert shapes == {k: tuple(v.shape) for k, v in hf.state_dict().items()}
  leaves = jax.tree.leaves(_abstract_params(vq.VQConfig()))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  count = sum(math.prod(x.shape) for x in leaves)
  assert count == sum(math.prod(s) for s in shapes.values()) == 71_883_403


def _one_line_error(exc_type, tensors, cfg):
  with pytest.raises(exc_type) as err:
    vq.params_from_torch(tensors, cfg)
  message = str(err.value)
  assert "\n" not in message
  return message


def test_conversion_errors(tiny):
  _, tensors, cfg, _, _ = tiny
  key = "decoder.up.0.attn.1.q.weight"
  missing = {k: v for k, v in tensors.items() if k != key}
  assert key in _one_line_error(KeyError, missing, cfg)

  bad = {**tensors, key: tensors[key][:, :, 0, 0]}
  message = _one_line_error(ValueError, bad, cfg)
  assert key in message and "(64, 64)" in message and "(64, 64, 1, 1)" in message

  extra = {**tensors, "quantize.codebook_used": np.zeros(65536, np.float32)}
  assert "quantize.codebook_used" in _one_line_error(ValueError, extra, cfg)


# transformers -> original deepseek-ai/Janus (LlamaGen) names: the inverse of
# vq.original_to_hf_key, written independently here.
_HF_TO_ORIGINAL = (
    (r"^encoder\.down\.", "encoder.conv_blocks."),
    (r"^decoder\.up\.", "decoder.conv_blocks."),
    (r"\.block\.(\d+)\.", r".res.\1."),
    (r"\.mid\.block_1\.", ".mid.0."),
    (r"\.mid\.attn_1\.", ".mid.1."),
    (r"\.mid\.block_2\.", ".mid.2."),
)


def _to_original(key):
  for pattern, repl in _HF_TO_ORIGINAL:
    key = re.sub(pattern, repl, key)
  return key


def test_original_layout_round_trip(tiny):
  _, tensors, cfg, _, state = tiny
  original = {_to_original(k): v for k, v in tensors.items()}
  original["quantize.codebook_used"] = np.zeros(65536, np.float32)   # dropped buffer
  assert "encoder.conv_blocks.2.attn.0.proj_out.weight" in original
  assert "decoder.conv_blocks.1.upsample.conv.weight" in original
  mapped = {}
  for key, value in original.items():
    hf_key = vq.original_to_hf_key(key)
    if hf_key is not None:
      mapped[hf_key] = value
  assert sorted(mapped) == sorted(tensors)
  params = vq.params_from_torch(mapped, cfg)
  jax.tree.map(np.testing.assert_array_equal, params, nnx.to_pure_dict(state))

  # Real VQ-16 names, as in Janus-Pro's pytorch_model.bin (prefix stripped).
  real = vq.expected_torch_shapes(vq.VQConfig())
  assert {vq.original_to_hf_key(_to_original(k)) for k in real} == set(real)
  for key, want in [
      ("encoder.conv_blocks.4.res.1.nin_shortcut.bias", None),
      ("encoder.conv_blocks.2.res.0.nin_shortcut.weight", "encoder.down.2.block.0.nin_shortcut.weight"),
      ("encoder.conv_blocks.3.downsample.conv.weight", "encoder.down.3.downsample.conv.weight"),
      ("encoder.conv_blocks.4.attn.1.proj_out.weight", "encoder.down.4.attn.1.proj_out.weight"),
      ("encoder.mid.1.norm.weight", "encoder.mid.attn_1.norm.weight"),
      ("decoder.mid.2.conv2.bias", "decoder.mid.block_2.conv2.bias"),
      ("decoder.conv_blocks.0.attn.2.k.weight", "decoder.up.0.attn.2.k.weight"),
      ("decoder.conv_blocks.0.res.2.conv1.weight", "decoder.up.0.block.2.conv1.weight"),
      ("decoder.conv_blocks.3.upsample.conv.bias", "decoder.up.3.upsample.conv.bias"),
      ("decoder.conv_blocks.1.res.0.nin_shortcut.weight", "decoder.up.1.block.0.nin_shortcut.weight"),
      ("decoder.conv_blocks.4.res.0.nin_shortcut.weight", None),
      ("decoder.conv_blocks.4.upsample.conv.weight", None),
      ("quantize.embedding.weight", "quantize.embedding.weight"),
      ("quant_conv.weight", "quant_conv.weight"),
  ]:
    if want is None:       # not in VQ-16: no shortcut where widths stay, no top upsample
      assert vq.original_to_hf_key(key) not in real
    else:
      assert vq.original_to_hf_key(key) == want and want in real
  assert vq.original_to_hf_key("quantize.codebook_used") is None
