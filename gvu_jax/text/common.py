"""What every prompt template shares: the understanding batch (query + the prompt
as the answer, right-padded), left-padded generation rows, the prompt checks and
the base class of the released models' templates (text/janus.py, text/xomni.py).
Host-side numpy; fixed lengths, so every batch has one shape (one compilation)."""

import dataclasses

import numpy as np

from gvu_jax.infra.errors import InputError


@dataclasses.dataclass
class UnderstandingBatch:
  """A right-padded understanding query + answer. `answer_mask[b, i]` marks the
  real prompt tokens of the answer; answer token i sits at position
  `answer_start + i` and is predicted from position `answer_start + i - 1`."""
  ids: np.ndarray           # [B, T] int32
  valid: np.ndarray         # [B, T] bool
  image_slots: np.ndarray   # [B, T] bool
  answer_start: int
  answer_mask: np.ndarray   # [B, L] bool (prompt tokens; the <eos> after them is not marked)
  answer_len: int           # L = longest answer incl. <eos>

  def arrays(self, repeat=1):
    """What the reward and scoring functions take; each row `repeat` times (one
    per image sampled for it)."""
    rows = {"ids": self.ids, "valid": self.valid, "image_slots": self.image_slots,
            "answer_mask": self.answer_mask}
    return {**{k: np.repeat(v, repeat, 0) for k, v in rows.items()},
            "answer_start": self.answer_start}


def shown(text, limit=80):
  """A prompt as an error message quotes it: its first `limit` characters."""
  return repr(text if len(text) <= limit else text[:limit] + "...")


def checked_prompt(text, ids, max_prompt_tokens):
  """`ids` (the prompt's tokens), or an error if the prompt is empty or too long."""
  if not ids:
    raise InputError("empty prompt")
  if len(ids) > max_prompt_tokens:
    raise InputError(f"prompt {shown(text)} is {len(ids)} tokens; the context leaves room for "
                     f"{max_prompt_tokens} (config model.max_prompt_tokens)")
  return ids


def understanding_batch(prefix, answers, *, eos_id, pad_id, image_token_id, max_answer_tokens):
  """Right-padded rows `prefix + answer + [eos]`, one per answer (token ids),
  with the answer tokens marked; every batch has the same length."""
  answer_len = max_answer_tokens + 1
  ids = np.full((len(answers), len(prefix) + answer_len), pad_id, np.int32)
  answer_mask = np.zeros((len(answers), answer_len), bool)
  for b, ans in enumerate(answers):
    seq = list(prefix) + list(ans) + [eos_id]
    ids[b, :len(seq)] = seq
    answer_mask[b, :len(ans)] = True
  return UnderstandingBatch(ids=ids, valid=ids != pad_id, image_slots=ids == image_token_id,
                            answer_start=len(prefix), answer_mask=answer_mask,
                            answer_len=answer_len)


def left_padded(seqs, length, pad_id):
  """Token lists -> (ids [B, length] int32 left-padded, valid [B, length])."""
  ids = np.full((len(seqs), length), pad_id, np.int32)
  for b, seq in enumerate(seqs):
    ids[b, length - len(seq):] = seq
  return ids, ids != pad_id


class ReleaseTemplates:
  """The prompts of a released model's tokenizer, fixed-length (one compilation):
  generation rows `gen_head + prompt + gen_tail`, left-padded; understanding rows
  `und_prefix + prompt + eos`, right-padded, the prompt being the answer. A
  subclass builds the pieces (text/janus.py JanusTemplates, text/xomni.py XOmniTemplates)
  and says how a prompt tokenizes (`prompt_ids`)."""

  def __init__(self, tokenizer, specials, max_prompt_tokens, model):
    self.tok = tokenizer
    self.max_prompt_tokens = max_prompt_tokens
    self.ids = {}
    for s in specials:
      self.ids[s] = tokenizer.token_to_id(s)
      if self.ids[s] is None:
        raise InputError(f"the tokenizer has no {s!r} token (not a {model} tokenizer?)")
    # set by the subclass: pad_id, eos_id, image_token_id, image_tokens,
    # _gen_head, _gen_tail, _und_image (the understanding query up to the image's
    # end), _question_ids (text -> the tokens after it, up to the answer) and
    # _und_prefix (_und_image + the describe query)

  def _encode(self, text):
    return self.tok.encode(text, add_special_tokens=False).ids

  def prompt_ids(self, text):
    return self._encode(text)

  def encode_prompt(self, text):
    text = text.strip()
    if not text:
      raise InputError("empty prompt")
    return checked_prompt(text, self.prompt_ids(text), self.max_prompt_tokens)

  @property
  def generation_length(self):
    return len(self._gen_head) + self.max_prompt_tokens + len(self._gen_tail)

  def generation(self, texts):
    """Left-padded generation prompts: (ids [B, P], valid [B, P])."""
    return left_padded([self._gen_head + self.encode_prompt(t) + self._gen_tail for t in texts],
                       self.generation_length, self.pad_id)

  def image_block(self, grid=None):
    """The understanding query up to the end of its image: `grid` (h, w) is the
    image's token grid where the model reads any (X-Omni), else the fixed one."""
    return self._und_image

  def question(self, texts, length, grids=None):
    """Left-padded understanding queries asking `texts` (one question each, about
    an image of `grids[b]`) and ending where the model's answer starts, so one
    pass reads every row's answer at the last position: (ids, valid,
    image_slots), each [B, length]."""
    grids = grids or [None] * len(texts)
    ids, valid = left_padded([self.image_block(g) + self._question_ids(t)
                              for t, g in zip(texts, grids)], length, self.pad_id)
    return ids, valid, ids == self.image_token_id

  def question_tokens(self, text, grid=None):
    """The length of `question`'s row for `text`."""
    return len(self.image_block(grid)) + len(self._question_ids(text))

  def understanding(self, texts):
    """Right-padded understanding queries with the prompts as the answer."""
    return understanding_batch(self._und_prefix, [self.encode_prompt(t) for t in texts],
                               eos_id=self.eos_id, pad_id=self.pad_id,
                               image_token_id=self.image_token_id,
                               max_answer_tokens=self.max_prompt_tokens)
