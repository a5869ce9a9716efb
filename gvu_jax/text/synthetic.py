"""Text side: the tokenizer and the chat templates that turn prompts into model
inputs (host-side numpy).

Generation:    <bos> <|User|>: {prompt} <|Assistant|>: <begin_of_image>        (left-padded)
Understanding: <bos> <|User|>: <begin_of_image> <image_placeholder> x N <end_of_image>
               describe the image in detail . <|Assistant|>: {prompt} <eos>     (right-padded)

The same shapes as Janus' templates (docs/design.md §8), word-level for the
embedded world.
"""

import numpy as np
import tokenizers

from gvu_jax import world
from gvu_jax.infra.errors import InputError
from gvu_jax.text.common import checked_prompt, left_padded, shown, understanding_batch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
BOI, EOI, IMG = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"
USER, ASSISTANT = "<|User|>:", "<|Assistant|>:"
SPECIALS = (PAD, BOS, EOS, UNK, BOI, EOI, IMG, USER, ASSISTANT)
UNDERSTANDING_QUERY = "describe the image in detail ."


def synthetic_tokenizer() -> tokenizers.Tokenizer:
  """A word-level tokenizer over the embedded world's words (deterministic)."""
  words = list(SPECIALS) + sorted(set(UNDERSTANDING_QUERY.split()) | set(world.vocabulary()))
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token=UNK))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(SPECIALS))
  return tok


class Templates:
  """Encodes prompts for generation and understanding with fixed, config-chosen
  lengths, so every batch has the same shape (one compilation)."""

  def __init__(self, tokenizer, image_tokens, max_prompt_tokens):
    self.tok = tokenizer
    self.image_tokens = image_tokens
    self.max_prompt_tokens = max_prompt_tokens
    self.ids = {s: tokenizer.token_to_id(s) for s in SPECIALS}
    self.pad_id, self.image_token_id = self.ids[PAD], self.ids[IMG]

  def encode_prompt(self, text):
    ids = self.tok.encode(text, add_special_tokens=False).ids
    if self.ids[UNK] in ids:
      words = [w for w, i in zip(text.split(), ids) if i == self.ids[UNK]]
      raise InputError(f"prompt {shown(text)}: words not in the tokenizer's vocabulary: "
                       f"{words[:5]}")
    return checked_prompt(text, ids, self.max_prompt_tokens)

  @property
  def generation_length(self):
    return self.max_prompt_tokens + 4   # <bos> <|User|>: ... <|Assistant|>: <begin_of_image>

  def generation(self, texts):
    """Left-padded generation prompts: (ids [B, P], valid [B, P])."""
    return left_padded([[self.ids[BOS], self.ids[USER], *self.encode_prompt(t),
                         self.ids[ASSISTANT], self.ids[BOI]] for t in texts],
                       self.generation_length, self.pad_id)

  def unconditional(self, batch):
    """CFG's unconditional rows: only <bos> and <begin_of_image> are real."""
    p = self.generation_length
    ids = np.full((batch, p), self.pad_id, np.int32)
    ids[:, -2:] = [self.ids[BOS], self.ids[BOI]]
    return ids, ids != self.pad_id

  def understanding(self, texts):
    prefix = [self.ids[BOS], self.ids[USER], self.ids[BOI],
              *[self.image_token_id] * self.image_tokens, self.ids[EOI],
              *self.tok.encode(UNDERSTANDING_QUERY, add_special_tokens=False).ids,
              self.ids[ASSISTANT]]
    return understanding_batch(prefix, [self.encode_prompt(t) for t in texts],
                               eos_id=self.ids[EOS], pad_id=self.pad_id,
                               image_token_id=self.image_token_id,
                               max_answer_tokens=self.max_prompt_tokens)
