"""The Janus VQ-16 image tokenizer (LlamaGen's VQGAN), NHWC, pixels in [-1, 1].

Encoder: conv_in, one stage per channel multiplier (ResnetBlocks, plus an
AttnBlock after each at the lowest resolution; stride-2 downsample after every
stage but the last), mid block (res, attn, res), GroupNorm, swish, conv_out.
Then quant_conv to the codebook width and a nearest-code lookup. The decoder
mirrors it (num_res_blocks + 1 blocks per stage, nearest 2x upsample + conv).

Module names follow transformers' `JanusVQVAE`, so its state-dict keys map
one to one onto the NNX parameter tree (`params_from_torch`). Original
deepseek-ai/Janus checkpoints (`gen_vision_model.*`, LlamaGen names) are mapped
to those keys by `original_to_hf_key`.

Quantization, as in transformers: `encode` takes the argmin of
|z|^2 + |e|^2 - 2 z.e over the raw codebook rows e (no normalisation), while
`decode` looks codes up in the L2-normalised codebook. The original LlamaGen /
Janus quantizer (codebook_l2_norm=True) L2-normalises both z and the codebook
before the argmin too; set `VQConfig(encode_l2_norm=True)` to get its codes.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """Defaults are the Janus / Janus-Pro VQ-16 (71.9M parameters, 16x downsampling)."""
  embed_dim: int = 8                  # codebook vector width
  num_embeddings: int = 16384         # codebook size
  latent_channels: int = 256          # encoder output / decoder input channels
  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 128
  channel_multiplier: tuple = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  encode_l2_norm: bool = False        # True: original Janus codes; False: transformers'
  dtype: str = "float32"              # compute dtype; weights stay float32

  @property
  def downsample(self):
    """Pixels per code along each side (16 for VQ-16)."""
    return 2 ** (len(self.channel_multiplier) - 1)

  @classmethod
  def from_hf(cls, d: dict, **overrides):
    """From the `vq_config` dict of a transformers Janus config.json.

    Keys that only concern the generation aligner / head, dropout, init or
    `num_patches` (decode infers the grid from the number of codes) are ignored.
    """
    if d.get("double_latent"):
      raise ValueError("double_latent=True is not supported (transformers' JanusVQVAE "
                       "cannot run with it either: quant_conv expects latent_channels)")
    kw = {k: d[k] for k in _HF_FIELDS if k in d}
    if "channel_multiplier" in kw:
      kw["channel_multiplier"] = tuple(kw["channel_multiplier"])
    return cls(**{**kw, **overrides})


_HF_FIELDS = ("embed_dim", "num_embeddings", "latent_channels", "in_channels",
              "out_channels", "base_channels", "channel_multiplier", "num_res_blocks")


def _conv(cfg, din, dout, size, rngs, **kw):
  kw.setdefault("padding", size // 2)
  return nnx.Conv(din, dout, (size, size), dtype=jnp.dtype(cfg.dtype), rngs=rngs, **kw)


class GroupNorm(nnx.Module):
  """GroupNorm over NHWC (the two-pass variance of nnx.GroupNorm(use_fast_variance=
  False), the same `scale` and `bias`) whose sums over the pixels are products with
  a ones vector: XLA's CPU backend reduced [B, H*W, C] over its middle axis at a
  small fraction of the speed of a matrix-vector product (1.5 s of a 3.8 s decode
  of 8 images at 256 px)."""

  def __init__(self, channels, num_groups, epsilon, dtype):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.num_groups, self.epsilon, self.dtype = num_groups, epsilon, dtype

  def __call__(self, x):
    b, h, w, c = x.shape
    per_group = c // self.num_groups
    x = x.astype(jnp.float32).reshape(b, h * w, c)
    ones = jnp.ones((h * w,), jnp.float32)

    def group_mean(t):   # [B, H*W, C] -> [B, 1, C]: the mean over each group's pixels
      sums = jnp.einsum("bnc,n->bc", t, ones, precision=jax.lax.Precision.HIGHEST)
      means = sums.reshape(b, self.num_groups, per_group).mean(-1) / (h * w)
      return jnp.repeat(means, per_group, axis=1)[:, None, :]

    centred = x - group_mean(x)
    y = centred * jax.lax.rsqrt(group_mean(centred * centred) + self.epsilon)
    y = y * self.scale[...] + self.bias[...]
    return y.reshape(b, h, w, c).astype(self.dtype)


def _norm(cfg, channels, rngs):
  return GroupNorm(channels, num_groups=32, epsilon=1e-6, dtype=jnp.dtype(cfg.dtype))


class ResnetBlock(nnx.Module):
  """x + conv(swish(norm(conv(swish(norm(x)))))), 1x1 shortcut when widths differ."""

  def __init__(self, cfg, din, dout, *, rngs):
    self.norm1 = _norm(cfg, din, rngs)
    self.conv1 = _conv(cfg, din, dout, 3, rngs)
    self.norm2 = _norm(cfg, dout, rngs)
    self.conv2 = _conv(cfg, dout, dout, 3, rngs)
    self.nin_shortcut = _conv(cfg, din, dout, 1, rngs) if din != dout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


class AttnBlock(nnx.Module):
  """Single-head self-attention over all positions, 1x1 convs for q, k, v, out."""

  def __init__(self, cfg, channels, *, rngs):
    self.norm = _norm(cfg, channels, rngs)
    self.q = _conv(cfg, channels, channels, 1, rngs)
    self.k = _conv(cfg, channels, channels, 1, rngs)
    self.v = _conv(cfg, channels, channels, 1, rngs)
    self.proj_out = _conv(cfg, channels, channels, 1, rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    y = self.norm(x)
    q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
    scores = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores * c ** -0.5, axis=-1).astype(v.dtype)
    out = jnp.einsum("bij,bjc->bic", probs, v).reshape(b, h, w, c)
    return x + self.proj_out(out)


class Downsample(nnx.Module):
  """Zero-pad one row/column at the bottom/right, then a stride-2 3x3 conv."""

  def __init__(self, cfg, channels, *, rngs):
    self.conv = _conv(cfg, channels, channels, 3, rngs, strides=2, padding=((0, 1), (0, 1)))

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

  def __init__(self, cfg, channels, *, rngs):
    self.conv = _conv(cfg, channels, channels, 3, rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class MidBlock(nnx.Module):

  def __init__(self, cfg, channels, *, rngs):
    self.block_1 = ResnetBlock(cfg, channels, channels, rngs=rngs)
    self.attn_1 = AttnBlock(cfg, channels, rngs=rngs)
    self.block_2 = ResnetBlock(cfg, channels, channels, rngs=rngs)

  def __call__(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


class Stage(nnx.Module):
  """One resolution: ResnetBlocks (each followed by an AttnBlock when `attn`),
  then an optional down- or upsampling."""

  def __init__(self, cfg, din, dout, num_blocks, *, attn=False, downsample=False,
               upsample=False, rngs):
    self.block = nnx.List([ResnetBlock(cfg, din if i == 0 else dout, dout, rngs=rngs)
                           for i in range(num_blocks)])
    self.attn = nnx.List([AttnBlock(cfg, dout, rngs=rngs)
                          for _ in range(num_blocks)]) if attn else None
    self.downsample = Downsample(cfg, dout, rngs=rngs) if downsample else None
    self.upsample = Upsample(cfg, dout, rngs=rngs) if upsample else None

  def __call__(self, x):
    for i, block in enumerate(self.block):
      x = block(x)
      if self.attn is not None:
        x = self.attn[i](x)
    if self.downsample is not None:
      x = self.downsample(x)
    if self.upsample is not None:
      x = self.upsample(x)
    return x


class Encoder(nnx.Module):

  def __init__(self, cfg: VQConfig, *, rngs):
    ch, mult = cfg.base_channels, cfg.channel_multiplier
    last = len(mult) - 1
    self.conv_in = _conv(cfg, cfg.in_channels, ch, 3, rngs)
    self.down = nnx.List()
    din = ch
    for i, m in enumerate(mult):
      self.down.append(Stage(cfg, din, ch * m, cfg.num_res_blocks, attn=i == last,
                             downsample=i != last, rngs=rngs))
      din = ch * m
    self.mid = MidBlock(cfg, din, rngs=rngs)
    self.norm_out = _norm(cfg, din, rngs)
    self.conv_out = _conv(cfg, din, cfg.latent_channels, 3, rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for stage in self.down:
      x = stage(x)
    x = self.mid(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


class Decoder(nnx.Module):
  """Stages run from the lowest resolution up: `up[0]` is the deepest one."""

  def __init__(self, cfg: VQConfig, *, rngs):
    ch, mult = cfg.base_channels, cfg.channel_multiplier
    last = len(mult) - 1
    din = ch * mult[last]
    self.conv_in = _conv(cfg, cfg.latent_channels, din, 3, rngs)
    self.mid = MidBlock(cfg, din, rngs=rngs)
    self.up = nnx.List()
    for i in reversed(range(len(mult))):
      self.up.append(Stage(cfg, din, ch * mult[i], cfg.num_res_blocks + 1, attn=i == last,
                           upsample=i != 0, rngs=rngs))
      din = ch * mult[i]
    self.norm_out = _norm(cfg, din, rngs)
    self.conv_out = _conv(cfg, din, cfg.out_channels, 3, rngs)

  def __call__(self, z):
    x = self.mid(self.conv_in(z))
    for stage in self.up:
      x = stage(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


def _l2_normalize(x):
  """x / max(|x|, 1e-12) on the last axis (torch's F.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Quantizer(nnx.Module):
  """The codebook [num_embeddings, embed_dim] (float32)."""

  def __init__(self, cfg: VQConfig, *, rngs):
    init = jax.random.normal(rngs.params(), (cfg.num_embeddings, cfg.embed_dim))
    self.embedding = nnx.Param(_l2_normalize(init))
    self.l2_norm = cfg.encode_l2_norm

  def encode(self, z):
    """z [..., embed_dim] -> nearest code index [...] (int32), in float32."""
    z = z.astype(jnp.float32)
    e = self.embedding[...]
    if self.l2_norm:
      z, e = _l2_normalize(z), _l2_normalize(e)
    dots = jnp.einsum("...d,nd->...n", z, e, precision=jax.lax.Precision.HIGHEST)
    dist = jnp.sum(z * z, axis=-1, keepdims=True) + jnp.sum(e * e, axis=-1) - 2 * dots
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)

  def lookup(self, codes):
    """codes [...] -> L2-normalised codebook rows [..., embed_dim]."""
    return _l2_normalize(self.embedding[...][codes])


class VQModel(nnx.Module):
  """codes <-> pixels. `encode`: [B, H, W, 3] -> [B, (H/16)*(W/16)] int32 codes,
  row-major over the code grid; `decode`: [B, N] codes (N square) -> [B, H, W, 3]
  float32 pixels in about [-1, 1] (not clipped)."""

  def __init__(self, cfg: VQConfig, *, rngs):
    self.encoder = Encoder(cfg, rngs=rngs)
    self.quant_conv = _conv(cfg, cfg.latent_channels, cfg.embed_dim, 1, rngs)
    self.quantize = Quantizer(cfg, rngs=rngs)
    self.post_quant_conv = _conv(cfg, cfg.embed_dim, cfg.latent_channels, 1, rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    self.cfg = cfg

  def encode(self, pixels):
    z = self.quant_conv(self.encoder(pixels))
    b, h, w, d = z.shape
    return self.quantize.encode(z.reshape(b, h * w, d))

  def decode(self, codes):
    b, n = codes.shape
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(f"decode needs a square number of codes per image, got {n}")
    z = self.quantize.lookup(codes).reshape(b, side, side, self.cfg.embed_dim)
    return self.decoder(self.post_quant_conv(z)).astype(jnp.float32)


def model_from_params(cfg: VQConfig, params: dict) -> VQModel:
  """VQModel(cfg) holding `params` (e.g. from `params_from_torch`), built
  without running the random initialisers."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: VQModel(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------
# Weights from PyTorch.


def expected_torch_shapes(cfg: VQConfig) -> dict:
  """transformers `JanusVQVAE` state-dict key (no `model.vqmodel.` prefix) ->
  torch shape. The VQ model has no buffers in the transformers layout."""
  shapes = {}

  def conv(name, din, dout, size):
    shapes[f"{name}.weight"] = (dout, din, size, size)
    shapes[f"{name}.bias"] = (dout,)

  def norm(name, c):
    shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

  def resnet(name, din, dout):
    norm(f"{name}.norm1", din)
    conv(f"{name}.conv1", din, dout, 3)
    norm(f"{name}.norm2", dout)
    conv(f"{name}.conv2", dout, dout, 3)
    if din != dout:
      conv(f"{name}.nin_shortcut", din, dout, 1)

  def attn(name, c):
    norm(f"{name}.norm", c)
    for proj in ("q", "k", "v", "proj_out"):
      conv(f"{name}.{proj}", c, c, 1)

  def mid(name, c):
    resnet(f"{name}.block_1", c, c)
    attn(f"{name}.attn_1", c)
    resnet(f"{name}.block_2", c, c)

  ch, mult, last = cfg.base_channels, cfg.channel_multiplier, len(cfg.channel_multiplier) - 1
  conv("encoder.conv_in", cfg.in_channels, ch, 3)
  din = ch
  for i, m in enumerate(mult):
    for j in range(cfg.num_res_blocks):
      resnet(f"encoder.down.{i}.block.{j}", din, ch * m)
      din = ch * m
      if i == last:
        attn(f"encoder.down.{i}.attn.{j}", din)
    if i != last:
      conv(f"encoder.down.{i}.downsample.conv", din, din, 3)
  mid("encoder.mid", din)
  norm("encoder.norm_out", din)
  conv("encoder.conv_out", din, cfg.latent_channels, 3)

  conv("quant_conv", cfg.latent_channels, cfg.embed_dim, 1)
  shapes["quantize.embedding.weight"] = (cfg.num_embeddings, cfg.embed_dim)
  conv("post_quant_conv", cfg.embed_dim, cfg.latent_channels, 1)

  conv("decoder.conv_in", cfg.latent_channels, din, 3)
  mid("decoder.mid", din)
  for k, i in enumerate(reversed(range(len(mult)))):
    for j in range(cfg.num_res_blocks + 1):
      resnet(f"decoder.up.{k}.block.{j}", din, ch * mult[i])
      din = ch * mult[i]
      if i == last:
        attn(f"decoder.up.{k}.attn.{j}", din)
    if i != 0:
      conv(f"decoder.up.{k}.upsample.conv", din, din, 3)
  norm("decoder.norm_out", din)
  conv("decoder.conv_out", din, cfg.out_channels, 3)
  return shapes


def params_from_torch(tensors: dict, cfg: VQConfig) -> dict:
  """transformers-layout VQ weights (numpy, `model.vqmodel.` stripped) -> the
  nested pure dict of `VQModel(cfg)`'s parameters (float32 numpy).

  Conv weights OIHW -> HWIO; GroupNorm weight -> scale; the codebook is
  `quantize.embedding`. Every expected key must be present with its shape, and
  no other key may be: the error names the first offending key. (Original
  checkpoints' `quantize.codebook_used` usage buffer is dropped earlier, by
  `original_to_hf_key`.)
  """
  shapes = expected_torch_shapes(cfg)
  for key, shape in shapes.items():
    if key not in tensors:
      raise KeyError(f"VQ weight {key!r} is missing (expected torch shape {shape})")
    got = tuple(np.shape(tensors[key]))
    if got != shape:
      raise ValueError(f"VQ weight {key!r} has shape {got}, expected {shape}")
  unexpected = sorted(set(tensors) - set(shapes))
  if unexpected:
    raise ValueError(f"{len(unexpected)} unexpected VQ weight(s), e.g. {unexpected[0]!r}")

  params = {}
  for key in shapes:
    x = np.asarray(tensors[key], np.float32)
    *path, leaf = key.split(".")
    if key == "quantize.embedding.weight":
      leaf = path.pop()                         # the codebook is a Param itself
    elif x.ndim == 4:
      leaf, x = "kernel", x.transpose(2, 3, 1, 0)
    elif leaf == "weight":
      leaf = "scale"                            # GroupNorm
    node = params
    for name in path:
      node = node.setdefault(int(name) if name.isdigit() else name, {})
    node[leaf] = x
  return params


# Original deepseek-ai/Janus (LlamaGen) names -> transformers names, after the
# conversion table of transformers' convert_janus_weights_to_hf.py. Stage
# indices carry over unchanged: both build the decoder stages deepest first.
_ORIGINAL_TO_HF = (
    (r"^encoder\.conv_blocks\.", "encoder.down."),
    (r"^decoder\.conv_blocks\.", "decoder.up."),
    (r"\.res\.", ".block."),
    (r"\.mid\.0\.", ".mid.block_1."),
    (r"\.mid\.1\.", ".mid.attn_1."),
    (r"\.mid\.2\.", ".mid.block_2."),
)


def original_to_hf_key(key: str):
  """An original Janus VQ key (`gen_vision_model.` stripped) -> the transformers
  key (`model.vqmodel.` stripped), or None for the codebook-usage buffer
  `quantize.codebook_used`, which is not a weight and is dropped."""
  if key == "quantize.codebook_used":
    return None
  for pattern, repl in _ORIGINAL_TO_HF:
    key = re.sub(pattern, repl, key)
  return key
