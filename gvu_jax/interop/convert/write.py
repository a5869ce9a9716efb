"""The conversion: a published checkpoint -> DST (weights, model config, tokenizer
files, and the CONVERTED marker last)."""

import json
import time

import jax
from etils import epath

from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert.source import (DTYPES, auto_dtype, find_shards, read_model_config,
                                            read_shard, to_transformers_names)
from gvu_jax.interop.convert.store import CONFIG_FILE, DONE_FILE, save_params
from gvu_jax.interop.convert.targets import convert_tensors

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json", "processor_config.json")
# The release's own files besides its weights (config.json, modeling code,
# generation config, tokenizer, licence) are kept in DST/release: an export in
# the release's layout writes them back unchanged.
RELEASE_DIR = "release"
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf",
                ".npz", ".index.json")
RELEASE_FILE_BYTES = 64 << 20


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
  _keep_release_files(src, dst / RELEASE_DIR)
  (dst / DONE_FILE).write_text(json.dumps({"source": str(src), "layout": layout,
                                          "dtype": dtype}))
  log(f"convert: wrote {dst} in {time.perf_counter() - tic:.1f} s")
  return m


def _keep_release_files(src, release):
  release.mkdir()
  for f in sorted(src.iterdir()):
    if (f.is_file() and not f.name.endswith(WEIGHT_FILES) and not f.name.startswith(".")
        and f.stat().length <= RELEASE_FILE_BYTES):
      f.copy(release / f.name)


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
