"""A converter source on the Hugging Face Hub: `hf://ORG/NAME[@REVISION]`, or a
bare `ORG/NAME` that is no local directory, becomes a local snapshot through
huggingface_hub.snapshot_download (which honours HF_HOME, HF_TOKEN and
HF_HUB_OFFLINE). Only the files the converter reads are fetched. The main
command never downloads: it reads a finished conversion."""

import os
import re

from etils import epath

from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert.source import read_json_object

# What convert reads: the config, the weights and their index (either layout), the
# tokenizer and image-processor files it copies.
PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json",
            "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
            "processor_config.json", "generation_config.json", "vocab.json", "merges.txt",
            "*.py", "LICENSE*")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_repo(src):
  """(repo id, revision or None) if `src` names a Hub repository, else None."""
  if src.startswith("hf://"):
    rest = src[len("hf://"):]
  elif _REPO.fullmatch(src.partition("@")[0]) and not os.path.exists(src):
    rest = src
  else:
    return None
  repo, _, revision = rest.partition("@")
  if not _REPO.fullmatch(repo):
    raise InputError(f"--src={src}: expected hf://ORG/NAME[@REVISION]")
  return repo, revision or None


def _image_tokenizer_files(snapshot):
  """X-Omni names its image tokenizer's ViT and projector files in config.json."""
  config = epath.Path(snapshot) / "config.json"
  if not config.exists():
    return []
  vision = read_json_object(config).get("vision_config")
  encoder = vision.get("encoder") if isinstance(vision, dict) else None
  if not isinstance(encoder, dict):
    return []
  return [encoder[k] for k in ("siglip_path", "projector_path")
          if isinstance(encoder.get(k), str) and encoder[k]]


def resolve(src):
  """`src` itself when it is a local (or gs://) path, else the local snapshot of
  the Hub repository it names."""
  found = hub_repo(src)
  if found is None:
    return src
  repo, revision = found
  try:
    import huggingface_hub
  except ImportError:
    raise InputError(f"--src={src}: reading from the Hub needs huggingface_hub "
                     "(pip install 'gvu_jax[hub]')") from None
  try:
    snapshot = huggingface_hub.snapshot_download(repo, revision=revision,
                                                 allow_patterns=list(PATTERNS))
    extra = _image_tokenizer_files(snapshot)
    if extra:
      snapshot = huggingface_hub.snapshot_download(repo, revision=revision,
                                                   allow_patterns=list(PATTERNS) + extra)
  except (huggingface_hub.errors.HfHubHTTPError, OSError, ValueError) as e:
    offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if os.environ.get(
        "HF_HUB_OFFLINE", "") not in ("", "0") else ""
    local = "" if src.startswith("hf://") else f"; no local directory {src} either"
    reason = " ".join(str(e).split())[:160]
    raise InputError(f"--src={src}: cannot get {repo}"
                     f"{'@' + revision if revision else ''} from the Hugging Face Hub"
                     f"{offline} ({type(e).__name__}: {reason}){local}") from None
  return snapshot
