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

Modules: source.py reads a published checkpoint, targets.py maps its tensors to
this project's parameter tree, store.py saves and loads converted checkpoints,
write.py is the conversion itself, parity.py the --check against transformers,
__main__.py the command line.
"""

from gvu_jax.interop.convert.source import (DTYPES, auto_dtype, find_shards, model_config_from_json,
                                            read_json_object, read_model_config, read_shard,
                                            stored_dtypes, to_transformers_names)
from gvu_jax.interop.convert.store import (CONFIG_FILE, DONE_FILE, conversion_info, load,
                                           load_image_tokenizer, load_params, read_converted_config,
                                           save_params, stored_dtype)
from gvu_jax.interop.convert.targets import Target, convert_tensors, targets, xomni_targets
from gvu_jax.interop.convert.write import TOKENIZER_FILES, convert

__all__ = ["DTYPES", "auto_dtype", "find_shards", "model_config_from_json", "read_json_object",
           "read_model_config", "read_shard", "stored_dtypes", "to_transformers_names",
           "CONFIG_FILE", "DONE_FILE", "conversion_info", "load", "load_image_tokenizer",
           "load_params", "read_converted_config", "save_params", "stored_dtype", "Target",
           "convert_tensors", "targets", "xomni_targets", "TOKENIZER_FILES", "convert"]
