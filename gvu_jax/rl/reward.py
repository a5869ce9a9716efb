"""The GvU intrinsic reward (docs/design.md §2): how likely the model's understanding
branch finds the prompt, given the image the generation branch made.

Decode tokens -> pixels, put the pixels in the understanding query
("Describe the image in detail."), append the prompt y_1..y_L as the answer,
and read every l_i = log p(y_i | image, query, y_<i) from ONE causal forward
pass (the reference code runs L passes, one per token, one image at a time).
"""

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra.errors import InputError
from gvu_jax.infra.pixels import on_8bit_grid
from gvu_jax.models.umm import text_hidden

AGGREGATIONS = ("geo_mean_prob", "prob", "mean_logprob", "weighted")


def answer_token_logprobs(model, ids, valid, image_slots, pixels, answer_mask, answer_start):
  """l[b, i] = log p(answer token i | image, query, answer tokens < i); 0 where masked.

  Answer token i sits at position answer_start + i and is predicted by the
  logits at the position before it. Only those L positions go through the
  vocabulary head (the other T - L would cost T/L times the head's FLOPs).
  """
  length = answer_mask.shape[1]
  hidden = text_hidden(model, ids, valid, image_slots, pixels)
  hidden = jax.lax.dynamic_slice_in_dim(hidden, answer_start - 1, length, axis=1)
  logits = model.text_head(hidden)
  targets = jax.lax.dynamic_slice_in_dim(ids, answer_start, length, axis=1)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  return jnp.where(answer_mask, logp, 0.0)


def aggregate(token_logp, mask, kind, weights=None):
  """Token log-likelihoods [B, L] -> one reward per image [B].

  geo_mean_prob: exp(mean_i l_i)   (the paper's default; reference `prob_score_2`)
  prob:          exp(sum_i l_i)    (reference `prob_score`)
  mean_logprob:  mean_i l_i
  weighted:      exp(sum_i w_i l_i / sum_i w_i)   (e.g. w = 0 on template words)
  """
  mask = mask.astype(jnp.float32)
  count = jnp.maximum(mask.sum(-1), 1.0)
  total = jnp.sum(token_logp * mask, axis=-1)
  if kind == "geo_mean_prob":
    return jnp.exp(total / count)
  if kind == "prob":
    return jnp.exp(total)
  if kind == "mean_logprob":
    return total / count
  if kind == "weighted":
    w = weights * mask
    return jnp.exp(jnp.sum(w * token_logp, -1) / jnp.maximum(w.sum(-1), 1e-6))
  raise InputError(f"reward.aggregation: unknown {kind!r}; expected one of {AGGREGATIONS}")


def word_token_ids(tokenizer, word):
  """The token ids a word takes inside a prompt: alone at the start ("photo") and
  after a space ("Ġphoto" in byte-level BPE, as Janus and X-Omni store it); each
  form that is one known token. Empty when the word is never a single token."""
  unk = getattr(tokenizer.model, "unk_token", None)
  unk_id = tokenizer.token_to_id(unk) if unk is not None else None
  ids = set()
  for form in (word, " " + word):
    pieces = tokenizer.encode(form, add_special_tokens=False).ids
    if len(pieces) == 1 and pieces[0] != unk_id:
      ids.add(pieces[0])
  return sorted(ids)


def token_weight_table(tokenizer, word_weights, vocab_size):
  """Per-vocabulary-id weights for the `weighted` aggregation (1 unless listed):
  each listed word's weight goes to every token id the word takes in a prompt."""
  table = np.ones((vocab_size,), np.float32)
  for word, weight in word_weights.items():
    token_ids = word_token_ids(tokenizer, word)
    if not token_ids:
      pieces = tokenizer.encode(" " + word, add_special_tokens=False).tokens
      raise InputError(f"reward.token_weights: {word!r} is not one token of the tokenizer "
                       f"(in a prompt it reads as {pieces}); list single tokens")
    table[token_ids] = weight
  return table


def intrinsic_reward(judge, pixels, query, kind, weight_table=None, quantize_pixels=True):
  """Decoded images [B, H, W, 3] -> (reward [B], token log-likelihoods [B, L]).

  `judge` is the model whose understanding branch scores (the policy itself by
  default, or the frozen reference); `query` holds the understanding batch arrays
  for the same prompts (ids, valid, image_slots, answer_mask, answer_start).
  With `quantize_pixels` float pixels are first rounded to 8 bits, so the reward
  scores the image a user saves (as every reference implementation does); image
  tokens (X-Omni reads its own) pass through.
  """
  if quantize_pixels and jnp.issubdtype(pixels.dtype, jnp.floating):
    pixels = on_8bit_grid(pixels)
  token_logp = answer_token_logprobs(judge, query["ids"], query["valid"], query["image_slots"],
                                     pixels, query["answer_mask"], query["answer_start"])
  weights = None
  if kind == "weighted":
    if weight_table is None:
      raise InputError("reward.aggregation=weighted needs per-token weights (reward.token_weights)")
    answer = jax.lax.dynamic_slice_in_dim(query["ids"], query["answer_start"],
                                          query["answer_mask"].shape[1], axis=1)
    weights = weight_table[answer]
  return aggregate(token_logp, query["answer_mask"], kind, weights), token_logp
