"""Converted checkpoints on disk: DST/params (Orbax, in groups), model_config.json
and the CONVERTED marker, written last."""

import json

import jax
import numpy as np
from etils import epath

from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert.source import DTYPES
from gvu_jax.interop.convert.targets import place

CONFIG_FILE = "model_config.json"
DONE_FILE = "CONVERTED"


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


def leaves_with_paths(tree, prefix=()):
  """(path, leaf) pairs in a fixed order (sorted keys), whatever the dict order."""
  for key, value in sorted(tree.items(), key=lambda kv: str(kv[0])):
    if isinstance(value, dict):
      yield from leaves_with_paths(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _key(path):
  return "/".join(str(p) for p in path)


def save_params(directory: epath.Path, tree):
  from gvu_jax.infra import checkpoint  # orbax; imported late so --help stays fast
  groups, size = [[]], 0
  for path, value in leaves_with_paths(tree):
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
  from gvu_jax.infra import checkpoint
  leaves = {_key(p): v for p, v in leaves_with_paths(like)}
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
  for path, _ in leaves_with_paths(like):
    place(out, path, stored[_key(path)])
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
