"""Text and image inputs for the real Janus models (Janus-1.3B, Janus-Pro-1B/7B):
the tokenizer.json loader, the chat templates and the image preprocessing
(host-side numpy/PIL). `JanusTemplates` has the interface of `text.Templates`.

The templates are the deepseek SFT format (deepseek-ai/Janus
janus/utils/conversation.py, sep "\\n\\n"), {U}/{A} = "<|User|>"/"<|Assistant|>"
("User"/"Assistant" for Janus-1.3B, style="janus_1_3b"):

Generation (empty system prompt), left-padded:
  <bos>{U}: {prompt}\\n\\n{A}:<begin_of_image>
Understanding (the processor's system prompt), right-padded:
  <bos>{SYSTEM_PROMPT}\\n\\n{U}: <begin_of_image><image_placeholder>x576<end_of_image>
  \\nDescribe the image in detail.\\n\\n{A}: {prompt}<eos>

The prompt is always tokenized as " {prompt}" (after "{U}:" or "{A}:"), so the
generation prompt and the understanding answer are the same tokens.
"""

import copy
import json
import os

import numpy as np
import PIL.Image
import tokenizers

from gvu_jax.infra.errors import InputError
from gvu_jax.text.common import ReleaseTemplates, shown

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
BOI, EOI, IMG = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"
SPECIALS = (BOS, EOS, PAD, BOI, EOI, IMG)
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.")
UNDERSTANDING_QUERY = "Describe the image in detail."
ROLES = {"deepseek": ("<|User|>", "<|Assistant|>"), "janus_1_3b": ("User", "Assistant")}


def write_stand_in_tokenizer(directory, special_ids, vocab_size):
  """A word-level tokenizer.json ("w0", "w1", ... and Janus' special tokens at
  `special_ids`: {token: id}) for random checkpoints of a real model's size
  (tests, benchmarks): the templates and the exporters read only its ids."""
  vocab = {f"w{i}": i for i in range(vocab_size) if i not in special_ids.values()}
  vocab.update(special_ids)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w3"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(special_ids))
  tok.save(os.path.join(directory, "tokenizer.json"))


def load_tokenizer(path) -> tokenizers.Tokenizer:
  """A tokenizer.json file, or a model directory holding one."""
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise InputError(f"no tokenizer.json at {path}")
  try:
    return tokenizers.Tokenizer.from_file(file)
  except Exception as e:
    raise InputError(f"cannot read tokenizer {file}: {e}") from None


class JanusTemplates(ReleaseTemplates):
  """Encodes prompts for generation and understanding with fixed lengths (one
  compilation), token for token as Janus' own processor would."""

  def __init__(self, tokenizer, image_tokens=576, max_prompt_tokens=128, style="deepseek"):
    if style not in ROLES:
      raise InputError(f"unknown Janus template style {style!r}; expected one of {sorted(ROLES)}")
    super().__init__(tokenizer, SPECIALS, max_prompt_tokens, "Janus")
    self.image_tokens = image_tokens
    self.style = style
    self.pad_id, self.eos_id, self.image_token_id = self.ids[PAD], self.ids[EOS], self.ids[IMG]
    user, assistant = ROLES[style]
    self._gen_head = [self.ids[BOS], *self._encode(f"{user}:")]
    self._gen_tail = [*self._encode(f"\n\n{assistant}:"), self.ids[BOI]]
    self._user, self._assistant = user, assistant
    self._und_image = self._image_query(SYSTEM_PROMPT)
    self._und_prefix = self._und_image + self._question_ids(UNDERSTANDING_QUERY)

  def _image_query(self, system_prompt):
    """<bos>[{system}\\n\\n]{U}: <begin_of_image><image_placeholder>xN<end_of_image>"""
    opening = f"{system_prompt}\n\n{self._user}: " if system_prompt else f"{self._user}: "
    return [self.ids[BOS], *self._encode(opening), self.ids[BOI],
            *[self.image_token_id] * self.image_tokens, self.ids[EOI]]

  def _question_ids(self, text):
    return self._encode(f"\n{text}\n\n{self._assistant}:")

  def without_system_prompt(self):
    """These templates, their questions (`question`) asked with no system prompt,
    as VLMEvalKit asks Janus benchmark questions (evaluation/protocols.py)."""
    out = copy.copy(self)
    out._und_image = self._image_query("")
    return out

  def prompt_ids(self, text):
    """The prompt's tokens as they follow "{U}:" / "{A}:" (i.e. " {prompt}")."""
    ids = self._encode(" " + text)
    unk = getattr(self.tok.model, "unk_token", None)
    if unk is not None and self.tok.token_to_id(unk) in ids:
      raise InputError(f"prompt {shown(text)}: has characters the tokenizer maps to {unk!r}")
    return ids

  def unconditional(self, batch):
    """CFG's unconditional rows: [B, P] of pads ending in <bos> <begin_of_image>,
    only those two valid.

    The original (generation_inference.py) keeps the prompt's length: the row is
    the prompt with positions 1..n-2 set to <pad> (only <bos> at 0 and
    <begin_of_image> at n-1 kept) and, with no attention mask, all n positions,
    the pads included, are attended. transformers' generate does the same per row
    (every token that is neither BOS nor BOI becomes pad) and reuses the
    conditional attention mask, so there too the replaced pads are attended and
    only left padding is not. Here the pads are masked out: the unconditional
    context is just <bos><begin_of_image>, the same for every prompt.
    `unconditional_like` gives the original form."""
    p = self.generation_length
    ids = np.full((batch, p), self.pad_id, np.int32)
    ids[:, -2:] = [self.ids[BOS], self.ids[BOI]]
    return ids, ids != self.pad_id

  def unconditional_like(self, ids, valid):
    """The original/transformers unconditional rows for `generation` output:
    every token but <bos> and <begin_of_image> replaced by <pad>; `valid` kept,
    so the replaced pads are attended (valid is then not `ids != pad_id`)."""
    keep = (ids == self.ids[BOS]) | (ids == self.ids[BOI])
    return np.where(keep, ids, self.pad_id).astype(np.int32), np.asarray(valid).copy()


def load_preprocessor_config(path):
  """preprocessor_config.json (or a directory holding it) -> dict with image_size,
  min_size, image_mean, image_std, rescale_factor, do_rescale, do_normalize.
  Reads the original Janus layout ("image_size") and the transformers one
  ("size": {"height", "width"})."""
  file = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else path
  try:
    with open(file) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"cannot read preprocessor config {file}: {e}") from None
  if not isinstance(raw, dict):
    raise InputError(f"{file}: expected a JSON object")

  def bad(key, want):
    return InputError(f"{file}: key {key!r} must be {want}, got {raw[key]!r}")

  if "image_size" in raw:
    key, size = "image_size", raw["image_size"]
  elif "size" in raw:
    key, size = "size", raw["size"]
    if not isinstance(size, dict) or size.get("height") != size.get("width"):
      raise bad(key, "{'height': n, 'width': n}")
    size = size["height"]
  else:
    raise InputError(f"{file}: missing key 'image_size' (or 'size')")
  if not isinstance(size, int) or size <= 0:
    raise bad(key, "a positive integer")
  cfg = {"image_size": size}
  for key in ("image_mean", "image_std"):
    if key not in raw:
      raise InputError(f"{file}: missing key {key!r}")
    v = raw[key]
    if (not isinstance(v, list) or len(v) != 3
        or not all(isinstance(x, (int, float)) for x in v)):
      raise bad(key, "3 numbers")
    cfg[key] = [float(x) for x in v]
  if any(x <= 0 for x in cfg["image_std"]):
    raise bad("image_std", "positive")
  for key, default, kind in (("min_size", 14, int), ("rescale_factor", 1 / 255, (int, float)),
                             ("do_rescale", True, bool), ("do_normalize", True, bool)):
    v = raw.get(key, default)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
      raise bad(key, "a bool" if kind is bool else "a number")
    cfg[key] = v
  return cfg


def preprocess(images, config):
  """Images (PIL or uint8 [H, W, 3]) -> float32 [B, S, S, 3], as transformers'
  JanusImageProcessor: bicubic resize of the longest side to S (other side
  `round`ed, at least min_size; the original Janus truncates with int()), pad to a
  centred square with int(mean * 255) per channel, rescale, normalise."""
  return np.stack([_preprocess_one(im, config) for im in images])


def _preprocess_one(image, config):
  if isinstance(image, PIL.Image.Image):
    image = image.convert("RGB")
  else:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
      raise InputError(f"expected a uint8 [H, W, 3] image, got {a.dtype} {a.shape}")
    image = PIL.Image.fromarray(a)
  w, h = image.size
  scale = config["image_size"] / max(w, h)
  size = (max(round(w * scale), config["min_size"]), max(round(h * scale), config["min_size"]))
  x = np.asarray(image.resize(size, PIL.Image.BICUBIC))
  side = max(x.shape[:2])
  if x.shape[0] != x.shape[1]:
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = [int(m * 255) for m in config["image_mean"]]
    top, left = (side - x.shape[0]) // 2, (side - x.shape[1]) // 2
    canvas[top:top + x.shape[0], left:left + x.shape[1]] = x
    x = canvas
  if config["do_rescale"]:
    x = (x.astype(np.float64) * config["rescale_factor"]).astype(np.float32)
  x = x.astype(np.float32)
  if config["do_normalize"]:
    x = (x - np.float32(config["image_mean"])) / np.float32(config["image_std"])
  return x
