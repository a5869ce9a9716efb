"""Image-token sampler: prefill the prompt, then `lax.fori_loop`s of one-token
steps over a preallocated, donated KV cache held in segments (cache_segments):
each step reads the segments filled so far, not the whole cache. LoRA adapters
are folded into their kernels once per rollout (merge_adapters).

Classifier-free guidance runs conditional and unconditional rows together
([cond..., uncond...]) and samples from  u + w (c - u)  (w = 1: CFG off, no
unconditional rows at all). Filters apply in the order temperature, top-k,
top-p, min-p. For each sampled token it returns `logp_sampled`, its log-prob
under the guided, tempered, filtered distribution it was actually drawn from
(logged; with no CFG, temperature 1 and no filter it is log pi_theta). The
log-probs GRPO trains on are computed teacher-forced after the rollout
(rl.make_logp_fn, rl.token_logprobs), so the decode loop computes nothing else.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvu_jax.infra import sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models.layers import Dense
from gvu_jax.models.llama import CACHE_AXES
from gvu_jax.models.umm import prefill


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0
  top_k: int = 0          # 0 = off
  top_p: float = 1.0      # 1 = off
  min_p: float = 0.0      # 0 = off
  cfg_weight: float = 1.0  # 1 = CFG off

  def __post_init__(self):
    if not self.temperature > 0:
      raise InputError(f"sampling.temperature={self.temperature}: must be > 0")
    if not 0 < self.top_p <= 1:
      raise InputError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
    if not 0 <= self.min_p < 1:
      raise InputError(f"sampling.min_p={self.min_p}: must be in [0, 1)")
    if self.top_k < 0:
      raise InputError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off)")

  @property
  def guided(self):
    return self.cfg_weight != 1.0


def filter_logits(logits, cfg: SamplingConfig):
  """Temperature, then top-k, top-p and min-p; removed tokens get -inf."""
  logits = logits / cfg.temperature
  neg_inf = jnp.full_like(logits, -jnp.inf)
  if cfg.top_k and cfg.top_k < logits.shape[-1]:   # k >= the vocabulary keeps everything
    kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if cfg.top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(mass_before < cfg.top_p, axis=-1, keepdims=True)  # >= 1 as top_p > 0
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  if cfg.min_p > 0.0:
    probs = jax.nn.softmax(logits, axis=-1)
    floor = cfg.min_p * jnp.max(probs, axis=-1, keepdims=True)
    logits = jnp.where(probs < floor, neg_inf, logits)
  return logits


def row_uniforms(key, rows):
  """One uniform per row: from one key for the whole batch (row r takes the r-th
  number), or from a key per row ([rows] keys: each row's draw is its own, whatever
  batch it shares, so evaluation does not depend on batch size or devices)."""
  if key.shape == ():
    return jax.random.uniform(key, (rows, 1))
  return jax.vmap(lambda k: jax.random.uniform(k, (1,)))(key)


def sample_categorical(key, logits):
  """One draw per row from softmax(logits) and its log-probability, by inverting
  the CDF with one uniform per row (row_uniforms); jax.random.categorical would
  draw one Gumbel per vocabulary entry, 16384 random numbers per row per step (11
  ms of a 75 ms CPU decode step at 32 rows). The CDF is searched in two levels,
  blocks of about sqrt(V) codes, then the codes of one block: one cumulative sum
  over all V codes took 4-5 ms at 32 rows x 16384 on a CPU, this 0.6 ms. Tokens
  with zero probability are never drawn. -> (codes [rows], log-probs [rows])."""
  rows, vocab = logits.shape
  logits = logits.astype(jnp.float32)
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  weights = jnp.exp(shifted)   # unnormalised
  size = math.isqrt(vocab - 1) + 1   # codes per block
  blocks = -(-vocab // size)
  padded = jnp.pad(weights, ((0, 0), (0, blocks * size - vocab))).reshape(rows, blocks, size)
  block_mass = padded.sum(-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)   # [rows, blocks]
  total = block_cdf[:, -1]
  target = row_uniforms(key, rows)[:, 0] * total
  last_with_mass = lambda w: w.shape[-1] - 1 - jnp.argmax(w[..., ::-1] > 0, axis=-1)
  # u * total can round up to total: then the last block (and code) with mass.
  block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), last_with_mass(block_mass))
  before = jnp.where(block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None],
                                                    -1)[:, 0], 0.0)
  inner = jnp.take_along_axis(padded, block[:, None, None], 1)[:, 0]   # [rows, size]
  within = jnp.sum(before[:, None] + jnp.cumsum(inner, axis=-1) <= target[:, None], axis=-1)
  code = block * size + jnp.minimum(within, last_with_mass(inner))
  logp = jnp.take_along_axis(shifted, code[:, None], -1)[:, 0] - jnp.log(total)
  return code, logp


@dataclasses.dataclass
class Samples:
  codes: jax.Array          # [B*G, N] int32, prompt-major (rows of prompt b: b*G .. b*G+G-1)
  logp_sampled: jax.Array   # [B*G, N] float32


jax.tree_util.register_dataclass(Samples, data_fields=["codes", "logp_sampled"], meta_fields=[])


def fold_in(key, i):
  """jax.random.fold_in for one key or a [rows] array of keys."""
  return jax.random.fold_in(key, i) if key.shape == () else jax.vmap(
      lambda k: jax.random.fold_in(k, i))(key)


def row_keys(key, indices, group_size=1):
  """A key per row for prompts at global `indices` (G rows each, prompt-major):
  fold_in(fold_in(key, index), sample). The same prompt and sample draw the same
  image in any batch, padded or not, on any number of devices."""
  per_prompt = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices))
  return jax.vmap(lambda k: jax.vmap(lambda n: jax.random.fold_in(k, n))(
      jnp.arange(group_size)))(per_prompt).reshape(-1)


# Image tokens per KV-cache segment: at least MIN_SEGMENT, at most MAX_SEGMENTS of them.
MIN_SEGMENT, MAX_SEGMENTS = 32, 8


def cache_segments(prompt_len, num_tokens):
  """Slots of each KV-cache segment: the prompt's, then the image tokens' in runs
  of equal length (the last image token is sampled, never fed back: N - 1 slots).
  Decode step i reads the prompt and the segments up to the one it writes, so the
  slots read per step exceed those filled by half a segment on average, not by
  half the cache."""
  image_slots = num_tokens - 1
  size = max(MIN_SEGMENT, -(-image_slots // MAX_SEGMENTS))
  runs = [min(size, image_slots - start) for start in range(0, image_slots, size)]
  return [prompt_len] + runs


def sample_image_tokens(model, ids, valid, uncond_ids, uncond_valid, key, cache, *,
                        cfg: SamplingConfig, num_tokens, group_size=1):
  """G rows for each prompt of `ids`, `valid` (prompt-major; with CFG, then as many
  unconditional rows, all of `uncond_ids`, `uncond_valid`: [1, prompt length]).
  The prefill runs once per prompt (and once for the unconditional prompt); its
  keys and values are copied to the rows. `key`: one key for the batch, or a
  [rows] array of keys (row_keys). `cache`: model.lm.init_cache of
  cache_segments(prompt length, num_tokens) for all rows. Returns (Samples, cache)."""
  prompts, p = ids.shape
  rows = prompts * group_size
  if cfg.guided:
    ids = jnp.concatenate([ids, uncond_ids])
    valid = jnp.concatenate([valid, uncond_valid])

  def per_row(x):   # prefill rows -> the rows: each prompt's G, then the unconditional
    cond = jnp.repeat(x[:prompts], group_size, 0)
    if not cfg.guided:
      return cond
    return jnp.concatenate([cond, jnp.broadcast_to(x[prompts:], (rows,) + x.shape[1:])])

  ends = np.cumsum([k.shape[2] for k in cache[0]["k"]])   # the slot after each segment
  next_token = lambda logits, step_key: guided_token(logits, step_key, cfg, rows)

  def read(cache, last):   # each layer's segments 0..last
    return [{"k": c["k"][:last + 1], "v": c["v"][:last + 1]} for c in cache]

  def written(cache, last, new):   # segment `last` of each layer replaced by `new`'s
    return [{"k": c["k"][:last] + n["k"][-1:] + c["k"][last + 1:],
             "v": c["v"][:last] + n["v"][-1:] + c["v"][last + 1:]} for c, n in zip(cache, new)]

  # Prefill: the prompt fills segment 0 (slots [0, p)); image token i goes to slot p + i.
  last, prompt_cache = prefill(model, ids, valid, per_row, cache[0]["k"][0].dtype)
  cache = written(cache, 0, prompt_cache)
  valid = per_row(valid)
  prompt_lengths = jnp.sum(valid, axis=1)
  slots_valid = jnp.concatenate([valid, jnp.zeros((valid.shape[0], ends[-1] - p), bool)], 1)
  first = next_token(model.image_head(last), fold_in(key, 0))
  out = jax.tree.map(lambda x: jnp.zeros((rows, num_tokens), x.dtype).at[:, 0].set(x), first)

  def decode(seg, carry):
    """Steps whose fed-back token lands in segment `seg`, reading slots [0, ends[seg])."""
    start, stop = ends[seg - 1] - p + 1, ends[seg] - p + 1   # steps i feed token i - 1
    slot = jnp.arange(ends[seg])

    def body(i, carry):
      out, cache = carry
      x = fed_back(model, out[0][:, i - 1], cfg)
      positions = (prompt_lengths + i - 1)[:, None]
      step_mask = (slots_valid[:, :ends[seg]] | ((slot >= p) & (slot < p + i)))[:, None, :]
      hidden, new = model.lm(x, positions, step_mask, read(cache, seg),
                             i - 1 - (ends[seg - 1] - p))
      token = next_token(model.image_head(hidden[:, 0]), fold_in(key, i))
      out = jax.tree.map(lambda o, n: o.at[:, i].set(n), out, token)
      return out, written(cache, seg, new)

    return jax.lax.fori_loop(start, stop, body, carry)

  carry = (out, cache)   # the whole cache rides along, updated in place
  for seg in range(1, len(ends)):
    carry = decode(seg, carry)
  out, cache = carry
  return Samples(*out), cache


def guided_token(logits, key, cfg, rows):
  """(code, log-prob) of the next token of each of `rows` rows, from the logits of
  the rows (and with CFG, then as many unconditional rows: u + w (c - u))."""
  cond = logits[:rows]
  guided = cond
  if cfg.guided:
    uncond = logits[rows:]
    guided = uncond + cfg.cfg_weight * (cond - uncond)
  code, logp = sample_categorical(key, filter_logits(guided, cfg))
  return code.astype(jnp.int32), logp


def fed_back(model, codes, cfg):
  """The embeddings of the tokens just sampled [rows], as the next step's input
  (with CFG both halves feed back the same token)."""
  x = model.embed_image_codes(codes[:, None])
  return jnp.concatenate([x, x]) if cfg.guided else x


def rollout_model(graphdef, params):
  """The model as a rollout runs it: adapters folded in, weights in the compute dtype."""
  model = merge_adapters(nnx.merge(graphdef, params))
  rollout_def, weights = nnx.split(model)
  return nnx.merge(rollout_def, in_compute_dtype(weights, rollout_def))


def merge_adapters(model):
  """Every LoRA adapter folded into its kernel (Dense.fold_lora), so the N decode
  steps of a rollout each read one weight per projection and run one matmul, not
  three. Rounding the sum to a bfloat16 kernel loses no more than adding the
  adapter's output to a bfloat16 activation does."""
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Dense):
      module.fold_lora()
  return model


def in_compute_dtype(params, graphdef):
  """The float weights cast once to the model's compute dtype (bfloat16 in the real
  recipes), so each of the N decode steps reads 2 bytes per weight, not 4."""
  dtype = jnp.dtype(nnx.merge(graphdef, params).cfg.lm.dtype)
  if dtype == jnp.float32:
    return params
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, params)


class Sampler:
  """Jit-compiled sampler for a fixed batch shape; owns and donates its KV cache.

  `sampler(params, ids, valid, key)` takes B prompts (left-padded, ending with
  <begin_of_image>) and returns G samples per prompt.
  """

  def __init__(self, graphdef, cfg: SamplingConfig, *, num_tokens, uncond_row, group_size=1,
               layout=None):
    self.cfg, self.num_tokens, self.group_size = cfg, num_tokens, group_size
    self.layout = layout   # sharding.Layout: the KV cache's rows and heads over the mesh
    self.uncond_ids, self.uncond_valid = (np.asarray(a) for a in uncond_row)
    self._graphdef = graphdef
    self._cache = None
    self._compiled = {}   # batch shape -> executable compiled ahead of time (compile())
    self._traces = 0

    def run(params, ids, valid, key, cache):
      self._traces += 1   # runs once per trace, i.e. per compilation
      model = rollout_model(graphdef, params)   # once per rollout
      return sample_image_tokens(model, ids, valid, self.uncond_ids, self.uncond_valid, key,
                                 cache, cfg=cfg, num_tokens=num_tokens, group_size=group_size)

    self._run = jax.jit(run, donate_argnums=4)
    self._cast = jax.jit(lambda p: in_compute_dtype(p, graphdef))

  def rollout_weights(self, params, abstract=False):
    """The weights as the decode loop reads them: where the layout's rollout rules
    differ from its own (sharding.Layout.for_rollout), cast to the compute dtype
    and then gathered, so the gather moves half the bytes."""
    rollout = self.layout.for_rollout() if self.layout is not None else None
    if rollout is self.layout:   # nothing to gather: `run` casts inside the jit
      return params
    if abstract:
      return rollout.abstract(jax.eval_shape(self._cast, params))
    return sharding.to_global(self._cast(params), rollout.for_params(params))

  def _new_cache(self, params, batch, prompt_len, abstract=False):
    rows = batch * self.group_size * (2 if self.cfg.guided else 1)
    make = lambda p: nnx.merge(self._graphdef, p).lm.init_cache(
        rows, cache_segments(prompt_len, self.num_tokens))
    shapes = jax.eval_shape(make, params)
    shardings = None
    if self.layout is not None:
      shardings = jax.tree.map(lambda x: self.layout.sharding(CACHE_AXES, x.shape), shapes)
    if abstract:
      return sharding.abstract(shapes, shardings)
    return jax.jit(make, out_shardings=shardings)(params)

  def __call__(self, params, ids, valid, key) -> Samples:
    shape = (ids.shape[0], ids.shape[1])
    if self._cache is None or self._cache_shape != shape:
      self._cache, self._cache_shape = self._new_cache(params, *shape), shape
    run = self._compiled.get((shape, key.shape), self._run)
    samples, self._cache = run(self.rollout_weights(params), ids, valid, key, self._cache)
    return samples

  def compile(self, params, ids, valid, key):
    """Compiles ahead of time for this batch shape (arguments may be abstract) and
    returns the executable, for its cost and memory analysis; later calls of this
    shape run it instead of compiling again."""
    cache = self._new_cache(params, *ids.shape, abstract=True)
    compiled = self._run.lower(self.rollout_weights(params, abstract=True), ids, valid, key,
                               cache).compile()
    self._compiled[(tuple(ids.shape), key.shape)] = compiled
    return compiled

  def step_programs(self, params, ids, valid):
    """(the prefill, one decode step) each lowered alone for this batch shape, to
    compile for their cost analysis: XLA counts a loop's body once however often it
    runs, so a rollout costs the prefill plus N - 1 of these steps. The step reads the cache
    up to its middle segment, the mean a step of the rollout reads."""
    weights = self.rollout_weights(params, abstract=True)
    cfg, rows = self.cfg, ids.shape[0] * self.group_size
    uncond = tuple(jnp.asarray(a) for a in (self.uncond_ids, self.uncond_valid))

    def prompt_pass(p, ids, valid):
      if cfg.guided:
        ids, valid = jnp.concatenate([ids, uncond[0]]), jnp.concatenate([valid, uncond[1]])
      return prefill(rollout_model(self._graphdef, p), ids, valid, lambda x: x)

    def one_step(p, codes, cache, key):
      model = rollout_model(self._graphdef, p)
      x = fed_back(model, codes, cfg)
      slots = sum(k.shape[2] for k in cache[0]["k"])
      positions = jnp.full((x.shape[0], 1), slots - 1)
      mask = jnp.ones((x.shape[0], 1, slots), bool)
      hidden, _ = model.lm(x, positions, mask, cache, cache[0]["k"][-1].shape[2] - 1)
      return guided_token(model.image_head(hidden[:, 0]), key, cfg, rows)

    cache = self._new_cache(params, *ids.shape, abstract=True)
    middle = 1 + len(cache[0]["k"]) // 2   # the prompt's segment and half the image's
    cache = [{name: segments[:middle] for name, segments in layer.items()} for layer in cache]
    codes = jax.ShapeDtypeStruct((rows,), jnp.int32)
    if self.layout is not None:
      codes = self.layout.abstract(codes, batch=True)
    return (jax.jit(prompt_pass).lower(weights, ids, valid),
            jax.jit(one_step).lower(weights, codes, cache, jax.random.key(0)))

  def compilations(self):
    """How many times the sampler has been traced and compiled (one per batch shape)."""
    return self._traces

