"""Convert a published Janus or X-Omni checkpoint into gvu_jax's format.

  python -m gvu_jax.convert --src=DIR --dst=DIR [--model=auto|<preset>]
      [--dtype=auto|float32|bfloat16|float16] [--force] [--check]

Reads either published layout:
  original (deepseek-ai/Janus*): config.json with model_type "multi_modality",
      pytorch_model.bin or pytorch_model-*.bin + pytorch_model.bin.index.json
  transformers (deepseek-community/Janus*): config.json with model_type "janus",
      model.safetensors or model-*.safetensors + model.safetensors.index.json
  X-Omni (X-Omni/X-Omni-En): config.json with model_type "x-omni", safetensors
      as above, and the image tokenizer's ViT and projector files that
      vision_config.encoder names, if present (its FLUX decoder is not converted)
and writes DST (a local path or gs://...):
  params/                   Orbax checkpoint of the weights, in `--dtype` (auto: the
                            widest floating dtype the source stores)
  model_config.json         the recipe's `model` block (gvu_jax.models.presets)
  image_tokenizer/          X-Omni only: its SigLIP-VQ encoder, when the release has it
  tokenizer.json, ...       tokenizer and image-processor files, copied
  CONVERTED                 written last; a DST without it is incomplete

Every source tensor is first named as transformers names it; one table then maps
those names to this project's parameter tree. Shards are read one at a time and
each tensor is cast as it arrives, so the host holds about one copy of the model.
"""

import dataclasses
import json
import re
import sys
import time

import jax
import ml_dtypes
import numpy as np
from absl import app, flags, logging
from etils import epath

from gvu_jax.errors import InputError
from gvu_jax.models import presets
from gvu_jax.models import vq as vq_lib
from gvu_jax.models.janus import JanusConfig

CONFIG_FILE = "model_config.json"
DONE_FILE = "CONVERTED"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json", "processor_config.json")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# ---------------------------------------------------------------- model config

_SIGLIP = {"siglip_large_patch16_384": presets.SIGLIP_LARGE_384}
# LlamaGen's VQ-16 (the only `gen_vision_config.cls` the Janus releases use).
_VQ16 = presets.VQ16


def model_config_from_json(cfg: dict, name="config.json"):
  """A Janus (either layout) or X-Omni config.json -> the `model` ConfigDict."""
  kind = cfg.get("model_type")
  if kind == "janus":
    return _from_transformers(cfg, name)
  if kind == "multi_modality":
    return _from_original(cfg, name)
  if kind == "x-omni":
    return _from_xomni(cfg, name)
  raise InputError(f"{name}: model_type {kind!r} is not a checkpoint gvu_jax reads "
                   "(expected 'janus' or 'multi_modality' (Janus), or 'x-omni')")


def _need(d, key, where):
  if key not in d:
    raise InputError(f"{where}: missing key {key!r}")
  return d[key]


def _lm(t, where):
  """LLaMA sizes; missing keys take LlamaConfig's defaults, as the original
  release relies on (Janus-Pro-7B's language_config names only the layer count
  and the vocabulary)."""
  rope = t.get("rope_theta", (t.get("rope_parameters") or {}).get("rope_theta", 10000.0))
  heads = t.get("num_attention_heads", 32)
  return dict(vocab_size=_need(t, "vocab_size", where), hidden=t.get("hidden_size", 4096),
              layers=t.get("num_hidden_layers", 32), heads=heads,
              kv_heads=t.get("num_key_value_heads") or heads,
              intermediate=t.get("intermediate_size", 11008), rope_theta=float(rope),
              norm_eps=float(t.get("rms_norm_eps", 1e-6)),
              max_position=t.get("max_position_embeddings", 2048))


def _from_transformers(cfg, name):
  t, v, q = (_need(cfg, k, name) for k in ("text_config", "vision_config", "vq_config"))
  lm = _lm(t, f"{name} text_config")
  h = lm["hidden"]
  checks = {"vision_config.use_qk_norm": (v.get("use_qk_norm", False), False),
            "vision_config.depth": (v.get("depth", 2), 2),
            "vision_config.hidden_act": (v.get("hidden_act", "gelu"), "gelu"),
            "vision_config.projection_dim": (v.get("projection_dim", h), h),
            "vq_config.num_hidden_layers": (q.get("num_hidden_layers", 2), 2),
            "vq_config.hidden_act": (q.get("hidden_act", "gelu"), "gelu"),
            "vq_config.image_token_embed_dim": (q.get("image_token_embed_dim", h), h),
            "vq_config.projection_dim": (q.get("projection_dim", h), h)}
  for key, (got, want) in checks.items():
    if got != want:
      raise InputError(f"{name}: {key} is {got!r}; this implementation supports {want!r}")
  width = v.get("hidden_size", 1024)
  vision = dict(image_size=v.get("image_size", 384), patch_size=v.get("patch_size", 16),
                width=width, layers=v.get("num_hidden_layers", 24),
                heads=v.get("num_attention_heads", 16),
                mlp_dim=int(width * v.get("mlp_ratio", 4.0)),
                norm_eps=float(v.get("layer_norm_eps", 1e-6)))
  vq = {k: q.get(k, d) for k, d in _VQ16.items()}
  return presets.janus_config(lm, vision, vq, image_token_embed=h)


def _from_original(cfg, name):
  lm = _lm(_need(cfg, "language_config", name), f"{name} language_config")
  vp = dict(_need(cfg, "vision_config", name).get("params", {}))
  model_name = vp.get("model_name", "siglip_large_patch16_384")
  if model_name not in _SIGLIP and "width" not in vp:
    raise InputError(f"{name}: vision_config.params.model_name {model_name!r} is unknown "
                     f"(expected one of {list(_SIGLIP)})")
  named = _SIGLIP.get(model_name, presets.SIGLIP_LARGE_384)
  s = {**named, **vp}   # explicit sizes override the named model
  ratio = vp.get("mlp_ratio", named["mlp_dim"] / named["width"])
  vision = dict(image_size=s["image_size"], patch_size=s["patch_size"], width=s["width"],
                layers=s["layers"], heads=s["heads"], mlp_dim=int(s["width"] * ratio),
                norm_eps=1e-6)
  gen = _need(cfg, "gen_vision_config", name)
  if gen.get("cls", "VQ-16") != "VQ-16":
    raise InputError(f"{name}: gen_vision_config.cls {gen.get('cls')!r} is not 'VQ-16'")
  gp = gen.get("params", {})
  vq = dict(_VQ16, num_embeddings=gp.get("image_token_size", 16384),
            embed_dim=gp.get("n_embed", 8))
  vq.update({k: gp[k] for k in _VQ16 if k in gp})   # explicit sizes (odd models, tests)
  head = _need(cfg, "gen_head_config", name).get("params", {})
  for key, params in (("aligner_config", _need(cfg, "aligner_config", name).get("params", {})),
                      ("gen_aligner_config", cfg.get("gen_aligner_config", {}).get("params", {}))):
    if params.get("projector_type", "mlp_gelu") != "mlp_gelu" or params.get("depth", 2) != 2:
      raise InputError(f"{name}: {key} must be a depth-2 'mlp_gelu' projector")
  # Janus-1.3B's config cannot be told from Pro-1B's: --model=janus_1_3b sets its template.
  template = "janus_1_3b" if "1.3B" in str(cfg.get("_name_or_path", "")) else "deepseek"
  return presets.janus_config(lm, vision, vq,
                              image_token_embed=head.get("image_token_embed", lm["hidden"]),
                              template=template)


def _from_xomni(cfg, name):
  """X-Omni: Qwen2 sizes at the top level plus its multimodal fields (defaults as
  its configuration_xomni.py); 36 x 36 image tokens (576 px), a run-time choice."""
  if cfg.get("tie_word_embeddings", False):
    raise InputError(f"{name}: tie_word_embeddings is true; X-Omni has separate heads")
  m = presets.xomni_config(
      _lm(cfg, name), mm_vocab_size=cfg.get("mm_vocab_size", 16448),
      image_vocab_size=cfg.get("image_vocab_size", 16384),
      num_mm_adap_layers=cfg.get("num_mm_adap_layers", 4),
      num_mm_head_layers=cfg.get("num_mm_head_layers", 4), image_grid=(36, 36))
  encoder = (cfg.get("vision_config") or {}).get("encoder")
  if encoder:
    m.image_encoder = _siglip_vq_sizes(encoder, name)
  return m


# X-Omni's image tokenizer ViTs by name (its modeling_vit.py SigLIP_MODEL_CONFIG;
# create_siglip_vit builds them at 2048 px / patch 16: a 128 x 128 position grid).
_SIGLIP_VQ = {"siglip2_giant_patch16_384": dict(width=1536, layers=40, heads=16, mlp_dim=6144)}


def _siglip_vq_sizes(encoder, name):
  """vision_config.encoder -> the image tokenizer's sizes and its weight files;
  explicit sizes override the named ViT (small test releases)."""
  vit = encoder.get("siglip_name", "siglip2_giant_patch16_384")
  if vit not in _SIGLIP_VQ and "width" not in encoder:
    raise InputError(f"{name}: vision_config.encoder.siglip_name {vit!r} is unknown "
                     f"(expected one of {list(_SIGLIP_VQ)})")
  sizes = dict(_SIGLIP_VQ.get(vit, {}), patch_size=16, pos_grid=128)
  sizes.update({k: encoder[k] for k in ("width", "layers", "heads", "mlp_dim", "patch_size",
                                        "pos_grid") if k in encoder})
  sizes.update(codebook_size=encoder.get("codebook_size", 16384),
               codebook_dim=encoder.get("codebook_dim", 2048))
  if encoder.get("z_channels", sizes["width"]) != sizes["width"]:
    raise InputError(f"{name}: vision_config.encoder.z_channels {encoder['z_channels']} is "
                     f"not the ViT width {sizes['width']}")
  return dict(sizes, siglip_path=encoder.get("siglip_path", ""),
              projector_path=encoder.get("projector_path", ""))


def read_json_object(path):
  """A JSON file that must hold an object -> dict, or one error naming the file."""
  try:
    value = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise InputError(f"{path}: holds a JSON {type(value).__name__}, expected an object")
  return value


def read_model_config(src: epath.Path, model="auto"):
  path = src / "config.json"
  if not path.exists():
    raise InputError(f"{path}: not found (every Janus checkpoint has a config.json)")
  cfg = read_json_object(path)
  try:
    found = model_config_from_json(cfg, str(path))
  except InputError:
    raise
  except (AttributeError, KeyError, TypeError, ValueError) as e:   # a field of the wrong kind
    raise InputError(f"{path}: a field has the wrong type or form ({type(e).__name__}: "
                     f"{str(e)[:120]})") from None
  if model != "auto":
    diff = presets.difference(model, found)
    if diff:
      key, want, got = diff
      raise InputError(f"{path}: --model={model} expects {key}={want}, the checkpoint "
                       f"has {got}")
    found.template = presets.preset(model).template
  return found


# ------------------------------------------------------------- source tensors

def find_shards(src: epath.Path):
  """-> (layout, [shard paths]) for the checkpoint in `src`."""
  for layout, single, index in (("transformers", "model.safetensors",
                                 "model.safetensors.index.json"),
                                ("original", "pytorch_model.bin", "pytorch_model.bin.index.json")):
    if (src / index).exists():
      weight_map = read_json_object(src / index).get("weight_map")
      if not (isinstance(weight_map, dict) and weight_map
              and all(isinstance(v, str) for v in weight_map.values())):
        raise InputError(f"{src / index}: not a weight index (expected \"weight_map\": "
                         "{tensor name: file name})")
      files = sorted(set(weight_map.values()))
      for f in files:
        if f != f.strip() or not f or "/" in f or "\\" in f or f in (".", ".."):
          raise InputError(f"{src / index} names {f!r}, not a file name in {src}")
        if not (src / f).exists():
          raise InputError(f"{src / index} names {f}, which is missing from {src}")
      return layout, [src / f for f in files]
    if (src / single).exists():
      return layout, [src / single]
    pattern = single.replace(".", "-*.", 1) if layout == "transformers" else \
        "pytorch_model-*.bin"
    shards = sorted(src.glob(pattern))
    if shards:
      raise InputError(f"{src}: found {len(shards)} shards ({shards[0].name}, ...) "
                       f"but no {index}")
  raise InputError(f"{src}: no checkpoint found (expected model*.safetensors or "
                   "pytorch_model*.bin)")


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _safetensors_header(f, path):
  """The JSON header of an open safetensors file -> (its size, {name: info}),
  every entry checked against the file before any tensor is read: a known dtype,
  a shape, and data offsets inside the file that hold exactly that many bytes."""
  f.seek(0, 2)
  file_size = f.tell()
  f.seek(0)
  if file_size < 8:
    raise InputError(f"{path}: {file_size} bytes, too short for a safetensors file")
  size = int.from_bytes(f.read(8), "little")
  if size > file_size - 8:
    raise InputError(f"{path}: header of {size} bytes runs past the end of the "
                     f"{file_size}-byte file (truncated, or not safetensors)")
  try:
    header = json.loads(f.read(size))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: header is not valid JSON ({e})") from None
  if not isinstance(header, dict):
    raise InputError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
  header.pop("__metadata__", None)
  data_size = file_size - 8 - size
  for name, info in header.items():
    _check_tensor_entry(path, name, info, data_size)
  # As the safetensors library requires, the tensors tile the data exactly: a
  # header size off by a few bytes of padding would otherwise shift every tensor.
  end = 0
  for name, info in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
    if info["data_offsets"][0] != end:
      raise InputError(f"{path}: tensor {name} starts at byte {info['data_offsets'][0]} of the "
                       f"data, expected {end} (tensors must follow one another)")
    end = info["data_offsets"][1]
  if end != data_size:
    raise InputError(f"{path}: the tensors hold {end} bytes but the file has {data_size} "
                     "bytes of data after the header (wrong header size, or not safetensors)")
  return size, header


def _check_tensor_entry(path, name, info, data_size):
  ok_ints = lambda v, n: (isinstance(v, list) and (n is None or len(v) == n)
                          and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                  for x in v))
  if not (isinstance(info, dict) and ok_ints(info.get("shape"), None)
          and ok_ints(info.get("data_offsets"), 2)):
    raise InputError(f"{path}: tensor {name}: malformed header entry {str(info)[:80]}")
  if not isinstance(info.get("dtype"), str) or info["dtype"] not in _SAFETENSORS_DTYPES:
    raise InputError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
  start, end = info["data_offsets"]
  if not start <= end <= data_size:
    raise InputError(f"{path}: tensor {name}: data offsets [{start}, {end}] run past the "
                     f"{data_size} bytes of data (truncated file?)")
  want = int(np.prod(info["shape"])) * np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize
  if end - start != want:
    raise InputError(f"{path}: tensor {name}: {end - start} bytes of data for shape "
                     f"{tuple(info['shape'])} {info['dtype']} ({want} bytes)")


def stored_dtypes(shards):
  """The numpy dtypes of the tensors in `shards` (headers only for safetensors; a
  memory-mapped, weights-only load for torch files)."""
  out = set()
  for path in shards:
    if path.name.endswith(".safetensors"):
      with path.open("rb") as f:
        out |= {np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
                for info in _safetensors_header(f, path)[1].values()}
    else:
      out |= {np.dtype(a.dtype) for _, a in read_shard(path)}
  return out


def auto_dtype(shards):
  """--dtype=auto: the source's own dtype, as transformers' torch_dtype="auto"
  keeps it, read from the weights themselves. Nothing is rounded: float64, or a
  mix of float16 and bfloat16, is stored as float32."""
  stored = stored_dtypes(shards)
  floats = {name for name, d in DTYPES.items() if np.dtype(d) in stored}
  if not floats and np.dtype(np.float64) not in stored:
    raise InputError(f"{shards[0].parent}: no floating-point tensor to take --dtype=auto "
                     "from; pass --dtype")
  return floats.pop() if len(floats) == 1 else "float32"


def read_shard(path: epath.Path):
  """Yields (name, numpy array) for every tensor in one shard, one at a time."""
  if path.name.endswith(".safetensors"):
    # The format is an 8-byte header size, a JSON header, then raw tensors: read
    # each tensor's bytes straight into its array (bfloat16 too, no framework).
    with path.open("rb") as f:
      size, header = _safetensors_header(f, path)
      for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        f.seek(8 + size + start)
        data = np.frombuffer(f.read(end - start), _SAFETENSORS_DTYPES[info["dtype"]])
        yield name, data.reshape(info["shape"])
    return
  import torch   # the original layout is a torch pickle: read without running its code
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"{path}: cannot read as a weights-only torch checkpoint ({e})") from None
  for name in list(state):
    t = state.pop(name)
    if t.dtype == torch.bfloat16:
      yield name, t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      yield name, t.numpy()


# Original deepseek names -> transformers names (VQ keys: gvu_jax.models.vq).
_ORIGINAL_RENAMES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_model\.vision_tower\.patch_embed\.proj\.", "model.vision_model.embeddings.patch_embedding."),
    (r"^vision_model\.vision_tower\.pos_embed$", "model.vision_model.embeddings.position_embedding.weight"),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.norm(\d)\.", r"model.vision_model.encoder.layers.\1.layer_norm\2."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.", r"model.vision_model.encoder.layers.\1.self_attn.projection_layer."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.", r"model.vision_model.encoder.layers.\1.self_attn.qkv."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.", r"model.vision_model.encoder.layers.\1.mlp."),
    (r"^vision_model\.vision_tower\.norm\.", "model.vision_model.post_layernorm."),
    (r"^aligner\.layers\.0\.", "model.aligner.fc1."),
    (r"^aligner\.layers\.2\.", "model.aligner.hidden_layers.0."),
    (r"^gen_aligner\.layers\.0\.", "model.generation_aligner.fc1."),
    (r"^gen_aligner\.layers\.2\.", "model.generation_aligner.hidden_layers.0."),
    (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
    (r"^gen_embed\.", "model.generation_embeddings."),
]
# Weights the published checkpoints carry but no forward pass uses.
_UNUSED = re.compile(r"(^vision_model\.vision_tower\.attn_pool\.|\.position_ids$|"
                     r"rotary_emb\.inv_freq$)")


def to_transformers_names(name, array):
  """One original-layout tensor -> [(transformers name, array)] ([] if unused).
  The fused SigLIP qkv is split into the q/k/v projections transformers has."""
  if _UNUSED.search(name):
    return []
  if name.startswith("gen_vision_model."):
    key = vq_lib.original_to_hf_key(name[len("gen_vision_model."):])
    return [] if key is None else [("model.vqmodel." + key, array)]
  for pattern, repl in _ORIGINAL_RENAMES:
    new = re.sub(pattern, repl, name)
    if new != name:
      if new.endswith("position_embedding.weight"):
        array = array.reshape(array.shape[-2:])        # [1, N, W] -> [N, W]
      if ".self_attn.qkv." in new:
        parts = np.split(array, 3, axis=0)
        return [(new.replace(".qkv.", f".{p}_proj."), a) for p, a in zip("qkv", parts)]
      return [(new, array)]
  return [(name, array)]    # unknown: reported by the name check


# ------------------------------------------------ transformers names -> params

@dataclasses.dataclass
class Target:
  """Where one transformers tensor goes: `path` in the parameter tree, the
  torch shape it must have, and how to turn it into the stored array."""
  path: tuple
  shape: tuple
  kind: str                # linear | copy | patch | part0/1/2 (fused qkv column block)


def targets(m):
  """{transformers name: Target} for every weight of the model config `m`
  except the VQ model's (gvu_jax.models.vq maps those)."""
  if m.family == "xomni":
    return xomni_targets(m)
  lm, v = m.lm, m.vision
  h, out = lm.hidden, {}
  linear = lambda *args: _linear(out, *args)

  def norm(name, path, dim, bias=True):
    out[name + ".weight"] = Target(path + ("scale",), (dim,), "copy")
    if bias:
      out[name + ".bias"] = Target(path + ("bias",), (dim,), "copy")

  _decoder_targets(out, lm, "model.language_model.", "embed_tokens", "norm")

  p, w = "model.vision_model.", v.width
  out[p + "embeddings.patch_embedding.weight"] = Target(
      ("vision", "patch_embed", "kernel"), (w, 3, v.patch_size, v.patch_size), "patch")
  out[p + "embeddings.patch_embedding.bias"] = Target(("vision", "patch_embed", "bias"),
                                                      (w,), "copy")
  n = (v.image_size // v.patch_size) ** 2
  out[p + "embeddings.position_embedding.weight"] = Target(("vision", "pos_embed"), (n, w),
                                                           "copy")
  for i in range(v.layers):
    q, path = f"{p}encoder.layers.{i}.", ("vision", "blocks", i)
    for j, part in enumerate("qkv"):
      out[f"{q}self_attn.{part}_proj.weight"] = Target(path + ("qkv", "kernel"), (w, w),
                                                       f"part{j}")
      out[f"{q}self_attn.{part}_proj.bias"] = Target(path + ("qkv", "bias"), (w,), f"part{j}")
    linear(f"{q}self_attn.projection_layer", path + ("proj",), w, w, True)
    norm(f"{q}layer_norm1", path + ("norm1",), w)
    norm(f"{q}layer_norm2", path + ("norm2",), w)
    linear(f"{q}mlp.fc1", path + ("fc1",), w, v.mlp_dim, True)
    linear(f"{q}mlp.fc2", path + ("fc2",), v.mlp_dim, w, True)
  norm(p + "post_layernorm", ("vision", "norm"), w)

  linear("model.aligner.fc1", ("aligner", "fc1"), w, h, True)
  linear("model.aligner.hidden_layers.0", ("aligner", "fc2"), h, h, True)
  out["model.generation_embeddings.weight"] = Target(("gen_embed", "embedding"),
                                                     (m.codebook_size, m.gen_embed_dim), "copy")
  linear("model.generation_aligner.fc1", ("gen_aligner", "fc1"), m.gen_embed_dim, h, True)
  linear("model.generation_aligner.hidden_layers.0", ("gen_aligner", "fc2"), h, h, True)
  e = m.image_token_embed or h
  linear("model.generation_head.proj_out", ("gen_head", "fc1"), h, e, True)
  linear("model.generation_head.vision_head", ("gen_head", "fc2"), e, m.codebook_size, True)
  return out


def _linear(out, name, path, din, dout, bias):
  out[name + ".weight"] = Target(path + ("kernel",), (dout, din), "linear")
  if bias:
    out[name + ".bias"] = Target(path + ("bias",), (dout,), "copy")


def _decoder_targets(out, lm, p, embed, final_norm):
  """The LLaMA / Qwen2 decoder under prefix `p` (its embedding and final norm
  named `embed`, `final_norm` there), and `lm_head`."""
  h, hd = lm.hidden, lm.hidden // lm.heads
  hkv = lm.kv_heads * hd
  out[f"{p}{embed}.weight"] = Target(("lm", "embed", "embedding"), (lm.vocab_size, h), "copy")
  for i in range(lm.layers):
    q, path = f"{p}layers.{i}.", ("lm", "layers", i)
    for ours, theirs, din, dout in (("q", "q_proj", h, lm.heads * hd), ("k", "k_proj", h, hkv),
                                    ("v", "v_proj", h, hkv), ("o", "o_proj", lm.heads * hd, h)):
      _linear(out, f"{q}self_attn.{theirs}", path + ("attn", ours), din, dout,
              lm.get("qkv_bias", False) and ours != "o")
    for ours, din, dout in (("gate", h, lm.intermediate), ("up", h, lm.intermediate),
                            ("down", lm.intermediate, h)):
      _linear(out, f"{q}mlp.{ours}_proj", path + ("mlp", ours), din, dout, False)
    for theirs, ours in (("input_layernorm", "input_norm"),
                         ("post_attention_layernorm", "post_attn_norm")):
      out[f"{q}{theirs}.weight"] = Target(path + (ours, "scale"), (h,), "copy")
  out[f"{p}{final_norm}.weight"] = Target(("lm", "final_norm", "scale"), (h,), "copy")
  _linear(out, "lm_head", ("lm", "lm_head"), h, lm.vocab_size, False)


def xomni_targets(m):
  """X-Omni's names (its modeling_xomni.py): lm_embed_tokens / mm_embed_tokens,
  lm_norm / mm_norm, lm_head / mm_head around a Qwen2 stack."""
  out, h = {}, m.lm.hidden
  _decoder_targets(out, m.lm, "model.", "lm_embed_tokens", "lm_norm")
  out["model.mm_embed_tokens.weight"] = Target(("lm", "mm_embed", "embedding"),
                                               (m.mm_vocab_size, h), "copy")
  out["model.mm_norm.weight"] = Target(("lm", "mm_norm", "scale"), (h,), "copy")
  _linear(out, "mm_head", ("lm", "mm_head"), h, m.mm_vocab_size, False)
  return out


def _place(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def convert_tensors(m, named_arrays, dtype, source="checkpoint"):
  """Iterable of (transformers name, array) -> parameter tree in `dtype`.

  Checks every name and shape; fails naming the first problem. Tensors are
  cast one at a time; fused blocks are filled in place (no second copy)."""
  table = targets(m)
  vq_cfg = JanusConfig.from_config(m).vq if m.family == "janus" else None
  vq_shapes = {} if vq_cfg is None else {
      "model.vqmodel." + k: tuple(s) for k, s in vq_lib.expected_torch_shapes(vq_cfg).items()}
  tree, vq_tensors, seen = {}, {}, set()
  for name, array in named_arrays:
    if name in seen:
      raise InputError(f"{source}: tensor {name} appears twice")
    seen.add(name)
    expected = table[name].shape if name in table else vq_shapes.get(name)
    if expected is None:
      raise InputError(f"{source}: unexpected tensor {name} {tuple(array.shape)} "
                       f"(not part of a {m.family} model of this config)")
    if tuple(array.shape) != tuple(expected):
      raise InputError(f"{source}: tensor {name} has shape {tuple(array.shape)}, expected "
                       f"{tuple(expected)}")
    if not np.issubdtype(np.dtype(array.dtype), np.floating) and array.dtype != ml_dtypes.bfloat16:
      raise InputError(f"{source}: tensor {name} has dtype {array.dtype}, expected floating "
                       "point")
    if name in vq_shapes:
      vq_tensors[name[len("model.vqmodel."):]] = array   # small: converted at the end
      continue
    t = table[name]
    if t.kind == "linear":
      value = array.T
    elif t.kind == "patch":    # conv [W, C, p, p] -> dense over (p, q, c)-flattened patches
      value = array.transpose(2, 3, 1, 0).reshape(-1, array.shape[0])
    elif t.kind.startswith("part"):
      j, width = int(t.kind[-1]), array.shape[0]
      try:
        fused = _lookup(tree, t.path)
      except KeyError:
        fused = np.zeros((array.shape[-1], 3 * width) if array.ndim == 2 else (3 * width,), dtype)
        _place(tree, t.path, fused)
      fused[..., j * width:(j + 1) * width] = array.T if array.ndim == 2 else array
      continue
    else:
      value = array
    _place(tree, t.path, np.ascontiguousarray(value, dtype=dtype))
  missing = [k for k in list(table) + list(vq_shapes) if k not in seen]
  if missing == ["lm_head.weight"]:   # a tied checkpoint: the head is the embedding
    _place(tree, ("lm", "lm_head", "kernel"), tree["lm"]["embed"]["embedding"].T.copy())
  elif missing:
    raise InputError(f"{source}: missing tensor {missing[0]}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  if vq_cfg is not None:
    tree["vq"] = jax.tree.map(lambda x: x.astype(dtype),
                              vq_lib.params_from_torch(vq_tensors, vq_cfg))
  return tree


# --------------------------------------------------------------------- driver

def convert(src, dst, model="auto", dtype="auto", force=False, log=print):
  """Converts `src` into `dst`; returns the `model` config."""
  src, dst = epath.Path(src), epath.Path(dst)
  if dtype != "auto" and dtype not in DTYPES:
    raise InputError(f"--dtype={dtype}: expected 'auto' or one of {list(DTYPES)}")
  if dst.exists() and any(dst.iterdir()):
    if not force:
      raise InputError(f"{dst} exists; pass --force to replace it")
    if not (dst / DONE_FILE).exists() and not (dst / CONFIG_FILE).exists():
      raise InputError(f"{dst} exists and is not a gvu_jax conversion; refusing to delete it "
                       "even with --force")
  m = read_model_config(src, model)
  if not (src / "tokenizer.json").exists():
    raise InputError(f"{src / 'tokenizer.json'}: not found (the converter copies the tokenizer "
                     "next to the weights)")
  layout, shards = find_shards(src)
  if dtype == "auto":
    dtype = auto_dtype(shards)
  log(f"convert: {layout} layout, {len(shards)} shard(s), to {dtype}")
  tic = time.perf_counter()

  def named_arrays():
    for shard in shards:
      log(f"convert: reading {shard.name}")
      for name, array in read_shard(shard):
        yield from (to_transformers_names(name, array) if layout == "original"
                    else [(name, array)])

  tree = convert_tensors(m, named_arrays(), DTYPES[dtype], source=str(src))
  if dst.exists():
    dst.rmtree()
  dst.mkdir(parents=True)
  save_params(dst / "params", tree)
  if m.get("image_encoder"):
    _convert_image_tokenizer(src, dst, m, DTYPES[dtype], log)
  (dst / CONFIG_FILE).write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True))
  for name in TOKENIZER_FILES:
    if (src / name).exists():
      (src / name).copy(dst / name)
  (dst / DONE_FILE).write_text(json.dumps({"source": str(src), "layout": layout,
                                          "dtype": dtype}))
  log(f"convert: wrote {dst} in {time.perf_counter() - tic:.1f} s")
  return m


def _convert_image_tokenizer(src, dst, m, dtype, log):
  """X-Omni's SigLIP-VQ encoder (its ViT and VQ projector files, named by
  vision_config.encoder) -> DST/image_tokenizer. Skipped, with a note, when the
  files are not in the release: GvU in token space does not need them."""
  from gvu_jax.models import siglip_vq
  e = m.image_encoder
  files = [src / e.siglip_path, src / e.projector_path]
  if not all(e[k] for k in ("siglip_path", "projector_path")) or not all(
      f.exists() for f in files):
    log(f"convert: image tokenizer not converted ({', '.join(str(f) for f in files)} not "
        "all there); GvU in token space does not need it")
    m.image_encoder = None
    return
  vit, projector = (dict(read_shard(f)) for f in files)
  cfg = siglip_vq.SiglipVQConfig.from_sizes(e)
  tree = siglip_vq.params_from_torch(vit, projector, cfg, source=str(src))
  save_params(dst / "image_tokenizer", jax.tree.map(lambda x: x.astype(dtype), tree))
  log(f"convert: image tokenizer from {files[0].name} and {files[1].name}")


def load_image_tokenizer(path, dtype="float32"):
  """A conversion's X-Omni image tokenizer -> a SiglipVQEncoder, or an error if
  the conversion has none."""
  from flax import nnx
  from gvu_jax.models import siglip_vq
  m = read_converted_config(path)
  if not m.get("image_encoder"):
    raise InputError(f"{path}: holds no image tokenizer (the release's ViT and projector "
                     "files were not there when it was converted)")
  cfg = siglip_vq.SiglipVQConfig.from_sizes(m.image_encoder, dtype=dtype)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: siglip_vq.SiglipVQEncoder(
      cfg, rngs=nnx.Rngs(0))))
  like = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, np.float32),
                      nnx.to_pure_dict(state))
  return nnx.merge(graphdef, load_params(epath.Path(path) / "image_tokenizer", like))


# Orbax copies what it saves, so the weights are written in groups of about this
# many bytes, one Orbax checkpoint each (params/000, params/001, ...; which
# weights are in which group is in params/groups.json): the host then holds the
# model plus one group, not two models.
SAVE_GROUP_BYTES = 1 << 30


def _flat(tree, prefix=()):
  """(path, leaf) pairs in a fixed order (sorted keys), whatever the dict order."""
  for key, value in sorted(tree.items(), key=lambda kv: str(kv[0])):
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _key(path):
  return "/".join(str(p) for p in path)


def save_params(directory: epath.Path, tree):
  from gvu_jax import checkpoint   # orbax; imported late so --help stays fast
  groups, size = [[]], 0
  for path, value in _flat(tree):
    if groups[-1] and size + value.nbytes > SAVE_GROUP_BYTES:
      groups.append([])
      size = 0
    groups[-1].append((path, value))
    size += value.nbytes
  for i, group in enumerate(groups):
    checkpoint.save_frozen(str(directory / f"{i:03d}"), {_key(p): v for p, v in group})
  (directory / "groups.json").write_text(json.dumps([[_key(p) for p, _ in g] for g in groups]))


def load_params(directory: epath.Path, like):
  """Inverse of save_params: the weights restored into the structure (and the
  dtypes: Orbax casts) of `like`."""
  from gvu_jax import checkpoint
  leaves = {_key(p): v for p, v in _flat(like)}
  groups = json.loads((directory / "groups.json").read_text())
  if sorted(sum(groups, [])) != sorted(leaves):
    missing = sorted(set(leaves) - set(sum(groups, [])))
    raise InputError(f"{directory}: the stored weights do not fit this model "
                     f"(e.g. {missing[0] if missing else 'extra weights stored'})")
  stored = {}
  for i, keys in enumerate(groups):
    stored.update(checkpoint.load_frozen(str(directory / f"{i:03d}"),
                                         {k: leaves[k] for k in keys}))
  out = {}
  for path, _ in _flat(like):
    _place(out, path, stored[_key(path)])
  return out


def read_converted_config(path):
  """The `model` block of a finished conversion at `path`."""
  import ml_collections
  path = epath.Path(path)
  if not (path / DONE_FILE).exists():
    raise InputError(f"{path}: not a finished gvu_jax conversion (no {DONE_FILE}); run "
                     "python -m gvu_jax.convert --src=... --dst=...")
  return ml_collections.ConfigDict(json.loads((path / CONFIG_FILE).read_text()))


def conversion_info(path):
  """What a finished conversion records of itself: source, layout, dtype."""
  return json.loads((epath.Path(path) / DONE_FILE).read_text())


def stored_dtype(path):
  """The dtype a finished conversion stores its weights in ("float32", ...)."""
  return conversion_info(path)["dtype"]


def load(path, dtype=None, like_model=None, param_dtype=None, layout=None):
  """A finished conversion -> (model config, parameters in the stored dtype, or
  `param_dtype`: Orbax casts while restoring). `dtype` sets the config's compute
  dtype; `like_model` is a model block to use instead of the stored one (same
  weights, other run-time options); with a sharding.Layout each device reads
  only its shards."""
  from gvu_jax.models import build
  m = read_converted_config(path) if like_model is None else like_model
  if dtype:
    m.dtype = dtype
  path = epath.Path(path)
  stored = DTYPES[stored_dtype(path)]
  _, like = build.abstract(m)
  like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, param_dtype or stored), like)
  if layout:
    like = layout.abstract(like)
  return m, load_params(path / "params", like)


def define_flags():
  """The CLI's flags (defined only when run as a program, so importing this
  module from elsewhere never clashes with another program's flags)."""
  flags.DEFINE_string("src", None, "Directory of the published checkpoint (either layout).")
  flags.DEFINE_string("dst", None, "Output directory (local or gs://).")
  flags.DEFINE_string("model", "auto", f"auto (from config.json) or one of {presets.JANUS_PRESETS}.")
  flags.DEFINE_string("dtype", "auto", "Stored dtype: auto (the source's own), float32, "
                      "bfloat16 or float16.")
  flags.DEFINE_bool("force", False, "Replace an existing conversion at --dst.")
  flags.DEFINE_bool("check", False, "After converting, compare against transformers on random "
                    "inputs (needs torch + transformers); exit 1 above tolerance.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # Orbax logs every save at INFO
  f = flags.FLAGS
  try:
    if not f.src or not f.dst:
      raise InputError("--src and --dst are required")
    if f.check and read_model_config(epath.Path(f.src), f.model).family != "janus":
      raise InputError("--check compares against transformers' Janus; X-Omni has no "
                       "transformers model (tests/test_xomni.py checks it against Qwen2's)")
    convert(f.src, f.dst, f.model, f.dtype, f.force)
    if f.check:
      from gvu_jax import parity
      report = parity.check(f.src, f.dst)
      print(json.dumps(report, indent=2))
      return 0 if report["ok"] else 1
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
