"""The one name table: each tensor of a checkpoint (as transformers names it) ->
its path in this project's parameter tree, with the transform it needs."""

import dataclasses

import jax
import ml_dtypes
import numpy as np

from gvu_jax.infra.errors import InputError
from gvu_jax.models import vq as vq_lib
from gvu_jax.models.janus import JanusConfig


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


def place(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def lookup(tree, path):
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
        fused = lookup(tree, t.path)
      except KeyError:
        fused = np.zeros((array.shape[-1], 3 * width) if array.ndim == 2 else (3 * width,), dtype)
        place(tree, t.path, fused)
      fused[..., j * width:(j + 1) * width] = array.T if array.ndim == 2 else array
      continue
    else:
      value = array
    place(tree, t.path, np.ascontiguousarray(value, dtype=dtype))
  missing = [k for k in list(table) + list(vq_shapes) if k not in seen]
  if missing == ["lm_head.weight"]:   # a tied checkpoint: the head is the embedding
    place(tree, ("lm", "lm_head", "kernel"), tree["lm"]["embed"]["embedding"].T.copy())
  elif missing:
    raise InputError(f"{source}: missing tensor {missing[0]}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  if vq_cfg is not None:
    tree["vq"] = jax.tree.map(lambda x: x.astype(dtype),
                              vq_lib.params_from_torch(vq_tensors, vq_cfg))
  return tree
