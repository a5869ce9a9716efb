"""What every unified multimodal model (UMM) here offers, and the functions that
use only that: one decoder `lm` that reads text and image tokens, with a text head
and an image head (docs/design.md §5). JanusUMM (models/janus.py) and XOmniUMM
(models/xomni.py) are the two implementations.

  `image_hidden` - teacher-forced hidden states that predict each image token
  `image_logits` - their logits over the codebook (T2I loss; GRPO reads them in
                   chunks, rl.token_logprobs)
  `text_hidden`  - hidden states of an understanding query with an image in it
                   (the reward reads the prompt's likelihood from these)
  `text_logits`  - text logits of the same (captioning loss, parity checks)
  `greedy_text`  - the greedy text reply to such a query, over a KV cache
                   (benchmark answers, evaluation/understanding.py)
Sampling (gvu_jax/rl/sampling.py) drives the same pieces step by step over a KV cache.
"""

from typing import Any, Protocol

import jax
import jax.numpy as jnp


class UMM(Protocol):
  """The interface the sampler, the reward, the losses and the checks rely on."""

  lm: Any   # decoder: embed_tokens(ids), __call__(x, positions, mask, cache=None), lm_head

  def embed_image_codes(self, codes):
    """Int [B, n] image codes -> decoder inputs [B, n, hidden] (generation path)."""

  def embed_query(self, ids, image_slots, image):
    """Text embeddings with the image written, in order, at the `image_slots`
    positions (pixels for Janus, image codes for X-Omni)."""

  def image_head(self, hidden):
    """Hidden states -> float32 logits over the image codebook."""

  def text_head(self, hidden):
    """Hidden states -> float32 logits over the text vocabulary."""


def positions_from_valid(valid):
  """RoPE positions that skip padding: the first real token is position 0."""
  return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)


def causal_mask(valid):
  """[B, T] validity -> [B, T, T]: query t reads keys s <= t of its own kind: real
  tokens read real tokens, padding reads padding. Real rows are the causal mask
  over real tokens; padding rows (whose outputs nobody reads) are never empty,
  so no kernel sees a row with nothing to attend to (models/attention.py)."""
  t = valid.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  return causal[None] & (valid[:, :, None] == valid[:, None, :])


def image_hidden(model: UMM, prompt_ids, prompt_valid, codes, group_size=1):
  """Teacher-forced hidden states [B, image_tokens, hidden]: position i predicts
  image token i given its (left-padded) prompt.

  Input sequence: prompt (ending in <begin_of_image>) then codes[:, :-1]; the
  hidden state at the last prompt position predicts codes[:, 0].

  group_size=G > 1: rows come in groups of G that share a prompt (prompt-major, as a
  GvU rollout's do). Each prompt then runs through the decoder once, and its keys
  and values are read by its G rows' image tokens (the pass over a KV cache the
  sampler uses): the same hidden states, without G - 1 of every G prompt passes.
  That pass attends with XLA attention, not a fused kernel.
  """
  if group_size > 1:
    return _image_hidden_shared_prompt(model, prompt_ids, prompt_valid, codes, group_size)
  n = codes.shape[1]
  x = jnp.concatenate([model.lm.embed_tokens(prompt_ids),
                       model.embed_image_codes(codes[:, :-1])], axis=1)
  valid = jnp.concatenate([prompt_valid, jnp.ones(codes[:, :-1].shape, bool)], axis=1)
  hidden, _ = model.lm(x, positions_from_valid(valid), causal_mask(valid))
  return hidden[:, -n:]


def prefill(model: UMM, ids, valid, to_rows, dtype=None):
  """Each prompt of ids, valid [P, L] through the decoder once -> (the hidden state
  at its last position, and each layer's keys and values as a one-segment KV cache),
  both copied by `to_rows` to the rows that continue the prompt (e.g. its G rows).
  The sampler's prefill and the shared prompt pass of image_hidden."""
  hidden, cache = model.lm(model.lm.embed_tokens(ids), positions_from_valid(valid),
                           causal_mask(valid), model.lm.init_cache(*ids.shape, dtype), 0)
  return to_rows(hidden[:, -1]), [{name: [to_rows(layer[name][0])] for name in layer}
                                  for layer in cache]


def _image_hidden_shared_prompt(model: UMM, prompt_ids, prompt_valid, codes, group_size):
  rows, n = codes.shape
  ids, valid = prompt_ids[::group_size], prompt_valid[::group_size]   # one row per prompt
  p = ids.shape[1]
  per_row = lambda x: jnp.repeat(x, group_size, axis=0)
  last, cache = prefill(model, ids, valid, per_row)
  image_slots = lambda kv: jnp.zeros(kv.shape[:2] + (n - 1,) + kv.shape[3:], kv.dtype)
  cache = [{name: kv + [image_slots(kv[0])] for name, kv in layer.items()} for layer in cache]
  valid = per_row(valid)
  # Image token j continues its prompt: position (real prompt tokens) + j; it reads
  # the prompt's real tokens and image tokens 0..j (causal_mask over the whole row).
  positions = jnp.sum(valid, axis=1, keepdims=True) + jnp.arange(n - 1)
  causal = jnp.tril(jnp.ones((n - 1, n - 1), bool))
  mask = jnp.concatenate([jnp.broadcast_to(valid[:, None], (rows, n - 1, p)),
                          jnp.broadcast_to(causal, (rows, n - 1, n - 1))], axis=-1)
  hidden, _ = model.lm(model.embed_image_codes(codes[:, :-1]), positions, mask, cache, 0)
  return jnp.concatenate([last[:, None], hidden], axis=1)


def image_logits(model: UMM, prompt_ids, prompt_valid, codes, group_size=1):
  """Teacher-forced logits of every image token given its prompt (image_hidden):
  float32 [B, image_tokens, codebook_size]."""
  return model.image_head(image_hidden(model, prompt_ids, prompt_valid, codes, group_size))


def text_hidden(model: UMM, ids, valid, image_slots, pixels):
  """Final hidden states [B, T, hidden] of a right-padded understanding sequence
  whose image slots are filled with the encoder features of `pixels`."""
  x = model.embed_query(ids, image_slots, pixels)
  return model.lm(x, positions_from_valid(valid), causal_mask(valid))[0]


def text_logits(model: UMM, ids, valid, image_slots, pixels):
  """Text logits [B, T, vocab] (float32) of every position of an understanding sequence."""
  return model.text_head(text_hidden(model, ids, valid, image_slots, pixels))


def greedy_text(model: UMM, ids, valid, image_slots, image, steps):
  """The greedy reply to each left-padded understanding query (its answer starts
  after the last position) -> (tokens [B, steps] int32, the text logits at the
  answer position [B, vocab]). The query's keys and values fill one cache
  segment, the reply's a second, one token a step (the last token is chosen,
  never fed back). Fixed length: a reply goes on past its end of sentence, which
  the caller cuts."""
  b, t = ids.shape
  hidden, cache = model.lm(model.embed_query(ids, image_slots, image), positions_from_valid(valid),
                           causal_mask(valid), model.lm.init_cache(b, t), 0)
  first_logits = model.text_head(hidden[:, -1])
  tokens = jnp.zeros((b, steps), jnp.int32).at[:, 0].set(
      jnp.argmax(first_logits, axis=-1).astype(jnp.int32))
  if steps == 1:
    return tokens, first_logits
  reply = model.lm.init_cache(b, steps - 1)
  cache = [{n: layer[n] + more[n] for n in layer} for layer, more in zip(cache, reply)]
  length = jnp.sum(valid, axis=1)

  def step(i, carry):   # token i - 1 goes in at reply slot i - 1; token i comes out
    tokens, cache = carry
    x = model.lm.embed_tokens(jax.lax.dynamic_slice_in_dim(tokens, i - 1, 1, axis=1))
    written = jnp.broadcast_to(jnp.arange(steps - 1) < i, (b, steps - 1))
    mask = jnp.concatenate([valid, written], axis=1)[:, None, :]
    hidden, cache = model.lm(x, (length + i - 1)[:, None], mask, cache, i - 1)
    token = jnp.argmax(model.text_head(hidden[:, 0]), axis=-1).astype(jnp.int32)
    return tokens.at[:, i].set(token), cache

  tokens, _ = jax.lax.fori_loop(1, steps, step, (tokens, cache))
  return tokens, first_logits
