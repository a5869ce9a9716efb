"""Reading a published checkpoint: its config.json (-> this project's `model`
block), its shards (safetensors or torch .bin, either layout) and their dtypes.
Tensors are named as transformers names them (`to_transformers_names`)."""

import contextlib
import json
import os
import re

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from gvu_jax.infra.errors import InputError
from gvu_jax.models import presets, vq as vq_lib

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
    value = json.loads(epath.Path(path).read_text())
  except FileNotFoundError:
    raise InputError(f"{path}: not found") from None
  except IsADirectoryError:
    raise InputError(f"{path}: a directory, expected a JSON file") from None
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


@contextlib.contextmanager
def _safetensors(path):
  """An open safetensors file, read with the safetensors library (which checks the
  header against the file: sizes, offsets, dtypes, tensors tiling the data), or one
  line naming the file. Remote paths (gs://...) are read into memory first."""
  try:
    if os.path.exists(os.fspath(path)):
      with safetensors.safe_open(os.fspath(path), framework="numpy") as f:
        yield _Mapped(f)
    else:
      yield _InMemory(safetensors.numpy.load(path.read_bytes()))
  except safetensors.SafetensorError as e:
    raise InputError(f"{path}: not a readable safetensors file "
                     f"({' '.join(str(e).split())[:160]})") from None


class _Mapped:
  """A file safe_open memory-maps: names, dtypes (from the header) and tensors."""

  def __init__(self, f):
    self.f = f

  def keys(self):
    return self.f.keys()

  def dtype(self, name):
    return np.dtype(_SAFETENSORS_DTYPES[self.f.get_slice(name).get_dtype()])

  def get_tensor(self, name):
    return self.f.get_tensor(name)


class _InMemory:
  """The same interface over tensors already loaded."""

  def __init__(self, tensors):
    self.tensors = tensors

  def keys(self):
    return list(self.tensors)

  def dtype(self, name):
    return self.tensors[name].dtype

  def get_tensor(self, name):
    return self.tensors[name]


def stored_dtypes(shards):
  """The numpy dtypes of the tensors in `shards` (headers only for safetensors; a
  memory-mapped, weights-only load for torch files)."""
  out = set()
  for path in shards:
    if path.name.endswith(".safetensors"):
      with _safetensors(path) as f:
        out |= {f.dtype(name) for name in f.keys()}
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
    with _safetensors(path) as f:   # numpy arrays, bfloat16 included (ml_dtypes)
      for name in sorted(f.keys()):
        yield name, f.get_tensor(name)
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
