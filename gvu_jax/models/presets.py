"""Model presets as ml_collections configs (the `model` block of a recipe)."""

import json

import ml_collections

from gvu_jax import world
from gvu_jax.infra.errors import InputError
from gvu_jax.text import synthetic as text


def synthetic(size="tiny"):
  """The embedded world's Janus-family UMM, trained from scratch on CPU."""
  hidden, layers, heads, width = {"tiny": (128, 4, 4, 64), "mini": (32, 2, 2, 32)}[size]
  return ml_collections.ConfigDict(dict(
      family="janus",
      image_tokenizer="cells",
      dtype="float32",
      remat=False,
      max_prompt_tokens=10,
      lm=dict(vocab_size=text.synthetic_tokenizer().get_vocab_size(), hidden=hidden,
              layers=layers, heads=heads, kv_heads=heads, intermediate=3 * hidden,
              rope_theta=10000.0, norm_eps=1e-6, max_position=64),
      vision=dict(image_size=world.IMAGE_SIZE, patch_size=world.CELL, width=width,
                  layers=2, heads=2, mlp_dim=4 * width, norm_eps=1e-6),
      codebook_size=world.CODEBOOK_SIZE,
      image_tokens=world.NUM_CELLS,
      gen_embed_dim=8,
      image_token_embed=hidden,
  ))


# Janus family (docs/design.md §8). Shapes of the published checkpoints; everything else
# (SigLIP-L/16 at 384 px, VQ-16, gen path widths) is shared.
_JANUS_LM = {  # hidden, layers, heads, intermediate
    "janus_1_3b": (2048, 24, 16, 5632),
    "janus_pro_1b": (2048, 24, 16, 5632),
    "janus_pro_7b": (4096, 30, 32, 11008),
}
JANUS_PRESETS = tuple(_JANUS_LM)
# The understanding encoder (SigLIP-L/16 at 384 px) and the VQ-16 of every release.
SIGLIP_LARGE_384 = dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16,
                        mlp_dim=4096, norm_eps=1e-6)
VQ16 = dict(embed_dim=8, num_embeddings=16384, latent_channels=256, in_channels=3,
            out_channels=3, base_channels=128, channel_multiplier=(1, 1, 2, 2, 4),
            num_res_blocks=2)
# The chat template each published checkpoint was trained with (gvu_jax/text/janus.py).
JANUS_TEMPLATE = {"janus_1_3b": "janus_1_3b", "janus_pro_1b": "deepseek",
                  "janus_pro_7b": "deepseek"}


# Not a release: every Janus part at about 1/4 width (78 M parameters, 256 image
# tokens at 256 px), for CPU benchmarks (`configs/janus_pro_1b.py:small`).
JANUS_SMALL = "janus_small"


def _janus_small():
  return janus_config(
      lm=dict(vocab_size=32000, hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1408,
              rope_theta=10000.0, norm_eps=1e-6, max_position=4096),
      vision=dict(SIGLIP_LARGE_384, image_size=256, width=256, layers=6, heads=4, mlp_dim=1024),
      vq=dict(VQ16, latent_channels=64, base_channels=32), image_token_embed=512)


def janus(name):
  """A Janus model's config: a release (`janus_1_3b`, `janus_pro_1b`, `janus_pro_7b`)
  or `janus_small`."""
  if name == JANUS_SMALL:
    return _janus_small()
  if name not in _JANUS_LM:
    raise InputError(f"unknown Janus preset {name!r}; expected one of "
                     f"{list(_JANUS_LM) + [JANUS_SMALL]}")
  hidden, layers, heads, intermediate = _JANUS_LM[name]
  return janus_config(
      lm=dict(vocab_size=102400, hidden=hidden, layers=layers, heads=heads, kv_heads=heads,
              intermediate=intermediate, rope_theta=10000.0, norm_eps=1e-6,
              max_position=16384),
      vision=SIGLIP_LARGE_384, vq=VQ16, image_token_embed=hidden, template=JANUS_TEMPLATE[name])


def preset(name):
  """A release's `model` block by name (Janus family or X-Omni)."""
  return xomni(name) if name in XOMNI_PRESETS else janus(name)


def difference(name, m):
  """The first weight-shaping key where the model block `m` differs from preset
  `name`, as (key, preset's value, m's value); None if they agree."""
  want = preset(name)
  if want.family != m.family:
    return "family", want.family, m.family
  keys = (("lm", "mm_vocab_size", "image_vocab_size", "num_mm_adap_layers",
           "num_mm_head_layers") if want.family == "xomni" else
          ("lm", "vision", "vq", "image_token_embed"))
  for key in keys:
    a, b = (json.loads(json.dumps(x.to_dict() if hasattr(x, "to_dict") else x))
            for x in (want[key], m[key]))
    if a != b:
      return key, a, b
  return None


def janus_config(lm, vision, vq, image_token_embed, template="deepseek"):
  """The `model` block for any Janus-family size (also used for converted odd sizes)."""
  # Janus generates as many tokens as the understanding encoder has patches, and
  # the VQ decodes them back to the encoder's input size (the reward's pixel path).
  side = vision["image_size"] // vision["patch_size"]
  downsample = 2 ** (len(vq["channel_multiplier"]) - 1)
  if side * downsample != vision["image_size"]:
    raise InputError(f"a {side}x{side} VQ grid decodes to {side * downsample} px, but the "
                     f"understanding encoder reads {vision['image_size']} px")
  return ml_collections.ConfigDict(dict(
      family="janus",
      image_tokenizer="vq16",
      template=template,
      dtype="bfloat16",
      remat=False,
      max_prompt_tokens=64,
      lm=dict(lm),
      vision=dict(vision),
      vq=dict(vq, channel_multiplier=tuple(vq["channel_multiplier"])),
      codebook_size=vq["num_embeddings"],
      image_tokens=side * side,
      gen_embed_dim=vq["embed_dim"],
      image_token_embed=image_token_embed,
  ))


# X-Omni (models/xomni.py): a Qwen2.5 decoder with multimodal adapter and head layers.
# X-Omni-En's sizes are Qwen2.5-7B's (the paper's base); its config.json was not
# at hand, so the converter reads the real one and `--model=xomni_en` compares.
_XOMNI_EN_LM = dict(vocab_size=152064, hidden=3584, layers=28, heads=28, kv_heads=4,
                    intermediate=18944, rope_theta=1000000.0, norm_eps=1e-6,
                    max_position=32768)
XOMNI_PRESETS = ("xomni_en",)


def xomni(name):
  if name not in XOMNI_PRESETS:
    raise InputError(f"unknown X-Omni preset {name!r}; expected one of {list(XOMNI_PRESETS)}")
  return xomni_config(_XOMNI_EN_LM, mm_vocab_size=16448, image_vocab_size=16384,
                      num_mm_adap_layers=4, num_mm_head_layers=4, image_grid=(36, 36))


def xomni_config(lm, mm_vocab_size, image_vocab_size, num_mm_adap_layers, num_mm_head_layers,
                 image_grid, dtype="bfloat16", template="xomni"):
  """The `model` block of an X-Omni-family model; `image_grid` (H, W) image tokens
  per generated image (X-Omni-En at 576 px: 36 x 36)."""
  return ml_collections.ConfigDict(dict(
      family="xomni",
      image_tokenizer="tokens",
      template=template,
      dtype=dtype,
      remat=False,
      max_prompt_tokens=64,
      lm=dict(lm, qkv_bias=True),
      mm_vocab_size=mm_vocab_size,
      image_vocab_size=image_vocab_size,
      num_mm_adap_layers=num_mm_adap_layers,
      num_mm_head_layers=num_mm_head_layers,
      image_grid=tuple(image_grid),
      image_tokens=image_grid[0] * image_grid[1],
  ))
