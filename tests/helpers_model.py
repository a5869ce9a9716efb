"""Shared tiny models and a jitted image_logits for test_model.py and test_sampling.py.

Everything is built once per process (functools.cache), so the two test files
share the parameter initialisation and the compiled forward.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvu_jax.text import synthetic as text
from gvu_jax import world
from gvu_jax.models import build, presets, umm

LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets=("q", "v"))
PROMPT_LEN = presets.synthetic("mini").max_prompt_tokens + 4


def mini_cfg():
  """A fresh copy of the mini preset (ConfigDicts are mutable: never share one)."""
  return presets.synthetic("mini")


@functools.cache
def mini():
  """(graphdef, params) of the mini preset, seed 0, from build.create."""
  return build.create(mini_cfg(), 0)


@functools.cache
def mini_lora():
  """(graphdef, params) of the mini preset with rank-4 LoRA on q and v, seed 1."""
  return build.create(mini_cfg(), 1, **LORA)


@functools.cache
def templates():
  return text.Templates(text.synthetic_tokenizer(), world.NUM_CELLS,
                        mini_cfg().max_prompt_tokens)


def prompt_texts():
  """Four prompts of the world with four different lengths, shortest first and
  longest second (so left padding is real and differs between rows)."""
  tpl = templates()
  by_len = {}
  for s in world.all_specs():
    by_len.setdefault(len(tpl.encode_prompt(s.text)), s.text)
  lengths = sorted(by_len)
  assert len(lengths) >= 4, lengths
  return [by_len[n] for n in (lengths[0], lengths[-1], lengths[1], lengths[-2])]


def prompts(n=4):
  """(ids [n, P], valid [n, P]) of the first n prompt_texts(), via the templates."""
  return templates().generation(prompt_texts()[:n])


def prompt_seq(text_):
  """The unpadded generation prompt of one text, built by hand."""
  tpl = templates()
  return ([tpl.ids[text.BOS], tpl.ids[text.USER]] + tpl.encode_prompt(text_)
          + [tpl.ids[text.ASSISTANT], tpl.ids[text.BOI]])


def left_pad(seqs, length):
  """Hand-made left padding: (ids [B, length] int32, valid [B, length] bool)."""
  ids = np.zeros((len(seqs), length), np.int32)
  valid = np.zeros((len(seqs), length), bool)
  for b, seq in enumerate(seqs):
    ids[b, length - len(seq):] = seq
    valid[b, length - len(seq):] = True
  return ids, valid


def random_codes(seed, rows, n=world.NUM_CELLS):
  return np.random.default_rng(seed).integers(0, world.CODEBOOK_SIZE, (rows, n), np.int32)


@functools.cache
def _image_logits(graphdef):
  return jax.jit(lambda params, ids, valid, codes: umm.image_logits(
      nnx.merge(graphdef, params), ids, valid, codes))


def image_logits(graphdef, params, ids, valid, codes):
  """Jitted umm.image_logits (one compilation per graphdef and shape)."""
  return np.asarray(_image_logits(graphdef)(params, ids, valid, codes))


def log_softmax_at(logits, codes):
  """log_softmax(logits)[..., codes] in float64 numpy."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return np.take_along_axis(logp, np.asarray(codes)[..., None], -1)[..., 0]


# XLA's CPU backend takes seconds to optimise each train step on 2 cores; the
# tests check what is computed, so they may compile without backend optimisation.
FAST = {"xla_backend_optimization_level": 0}


def host_init(model_cfg, seed, **lm_overrides):
  """(graphdef, params) with the tree of build.create, the weights drawn on the
  host: build.create compiles ~35 random initialisers (seconds each on 2 cores).
  Same scales: kernels N(0, 1/fan_in), unit norms, zero biases, LoRA B = 0."""
  graphdef, abstract = build.abstract(model_cfg, **lm_overrides)
  rng = np.random.default_rng(seed)

  def init(path, x):
    name = path[-1].key
    if name == "scale":
      return jnp.ones(x.shape, x.dtype)
    if name in ("bias", "lora_b"):
      return jnp.zeros(x.shape, x.dtype)
    std = {"embedding": 1 / np.sqrt(x.shape[-1]), "pos_embed": 0.02}.get(
        name, 1 / np.sqrt(x.shape[0]))
    return jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(init, abstract)
