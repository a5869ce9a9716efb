"""The analytic model of a GvU step on a device mesh (docs/scaling.md, "The
analytic model"): parameter counts, FLOPs and bytes per program, the shards each
device holds, and the on-paper seconds of a step on a named machine. Beside the
compilers' own figures in the benchmark's report, never instead of them."""

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra.accelerators import MACHINES
from gvu_jax.rl import grpo



def count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def nbytes(tree):
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def decoder_matmul_params(m):
  """Weights every decoder token multiplies with (the layers' projections)."""
  lm = m.lm
  head_dim = lm.hidden // lm.heads
  attn = lm.hidden * head_dim * (2 * lm.heads + 2 * lm.kv_heads)
  return lm.layers * (attn + 3 * lm.hidden * lm.intermediate)


def gen_head_params(m):
  hidden = m.image_token_embed or m.lm.hidden
  return m.lm.hidden * hidden + hidden * m.codebook_size


def sampler_step_bytes(m, cache_rows, prompt_tokens):
  """-> (weight bytes, KV-cache bytes at the mean context, full KV-cache bytes) that
  a decode step over `cache_rows` rows reads, in the compute dtype."""
  itemsize = jnp.dtype(m.dtype).itemsize
  weights = (decoder_matmul_params(m) + gen_head_params(m)) * itemsize
  per_token = 2 * m.lm.layers * cache_rows * m.lm.kv_heads * (m.lm.hidden // m.lm.heads) * itemsize
  return (weights, per_token * (prompt_tokens + m.image_tokens / 2),
          per_token * (prompt_tokens + m.image_tokens - 1))


def forward_flops(m, rows, length, head_tokens):
  """Matmul FLOPs of one decoder pass: projections, attention (QK and PV over the
  full square) and the image head on `head_tokens` positions."""
  linear = decoder_matmul_params(m) * length + gen_head_params(m) * head_tokens
  attention = 2 * m.lm.layers * length * length * m.lm.hidden
  return 2 * rows * (linear + attention)


def update_forward_flops(m, rows, prompt_tokens, group):
  """forward_flops of the update's teacher-forced pass over `rows` rows; with a
  shared prompt pass (group G > 1) the prompt's tokens run once per G rows."""
  length = prompt_tokens + m.image_tokens - 1
  flops = forward_flops(m, rows, length, m.image_tokens)
  if group > 1:
    flops -= forward_flops(m, rows - rows // group, prompt_tokens, 0)
  return flops


def grpo_bytes_model(m, rows, length, trainable, frozen_bytes, flash, layout):
  """Analytic bytes one device holds in one GRPO step (per micro-batch of `rows`):
  the frozen weights, the trainable fp32 weights with their gradient and two Adam
  moments (all split over fsdp x tensor), then, split over the batch devices, the
  saved activations (each layer's input under remat, about 10 tensors of the layer
  otherwise), one layer's forward+backward working set (its MLP part for one of
  `mlp_chunks` token slices), its attention scores (none with a flash kernel) and
  one chunk of the image-head logits (logits, log-softmax and their gradient in
  float32 for grpo.LOGIT_CHUNK tokens: grpo.token_logprobs)."""
  lm, item = m.lm, jnp.dtype(m.dtype).itemsize
  tokens = rows * length
  per_layer_saved = tokens * lm.hidden * item * (1 if m.remat else 10)
  working = tokens * (3 * lm.intermediate / m.get("mlp_chunks", 1) + 6 * lm.hidden) * item * 2
  scores = 0 if flash else 2 * rows * lm.heads * length * length * 4
  logits = 3 * rows * min(grpo.LOGIT_CHUNK, m.image_tokens) * m.codebook_size * 4
  weight_shards, row_shards = shards(layout)
  return int((frozen_bytes + 16 * trainable) / weight_shards
             + (lm.layers * per_layer_saved + working + scores + logits) / row_shards)


def shards(layout, rollout=False):
  """(ways the weights are split, ways the rows are split) on the layout's mesh; the
  rollout's weights are split over tensor only (sharding.Layout.for_rollout)."""
  mesh = layout.mesh.shape
  weights = mesh["tensor"] if rollout and layout.rollout_gathered else mesh["fsdp"] * mesh["tensor"]
  return weights, layout.batch_devices


def estimate(report, m, prompt_tokens, machine, mfu=0.4):
  """On-paper seconds of one GvU step of the analysed recipe on `machine` chips,
  from the report's shapes and mesh:
    rollout  N token steps, each reading the weights (gathered over fsdp, split over
             tensor) and this chip's share of the KV cache at HBM bandwidth (decode
             at a few rows per chip is memory-bound; the one all-gather per rollout
             and the prefill are left out);
    reward   one decoder pass over the understanding query (the vision encoder,
             about 5% of it, left out) at `mfu` of peak;
    update   the reference log-probs (one forward) and the GRPO step at `mfu`.
  and whether the analytic per-chip memory (the larger of rollout + resident training
  state and the update; flash attention) fits in 90% of its HBM."""
  peak, bandwidth, hbm = MACHINES[machine]
  mesh = {k: int(v) for k, v in (kv.split("=") for kv in report["mesh"].split())}
  chips = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
  rollout, reward, update = report["sampler"]["rollout"], report["reward"], report["grpo"]
  weights, kv, _ = sampler_step_bytes(m, rollout["rows"], prompt_tokens)
  step_bytes = weights / mesh["tensor"] + kv / chips
  rollout_s = m.image_tokens * step_bytes / bandwidth
  at_mfu = lambda flops: flops / (chips * peak * mfu)
  reward_s = at_mfu(forward_flops(m, reward["images"], reward["length"], 0))
  update_s = at_mfu(update_forward_flops(m, update["rows"], prompt_tokens,
                                         update.get("shared_prompt_group", 1))
                    + update["model_tflop"] * 1e12)
  # The training state stays on the chips while the rollout runs beside it.
  state = (report["params"] * jnp.dtype(m.dtype).itemsize + 16 * update["trainable_params"]) / (
      mesh["fsdp"] * mesh["tensor"])
  rollout_peak = state + rollout["model_bytes"]
  peak_bytes = max(rollout_peak, update["model_bytes_flash"])
  total = rollout_s + reward_s + update_s
  return {"machine": machine, "chips": chips, "rollout_s": rollout_s, "reward_s": reward_s,
          "update_s": update_s, "step_s": total,
          "images_per_s": rollout["prompts"] * rollout["group_size"] / total,
          "rollout_peak_bytes": rollout_peak, "update_peak_bytes": update["model_bytes_flash"],
          "analytic_peak_bytes": peak_bytes, "fits": peak_bytes < 0.9 * hbm}
