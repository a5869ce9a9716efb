"""GRPO on the intrinsic reward (docs/design.md §3): group advantages, the
clipped-ratio loss with a k3 KL penalty to the reference policy, and the
jit-compiled update step (gradient accumulation, global-norm clipping, optax;
the optimizer itself is optimizer.py)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gvu_jax.infra.errors import InputError
from gvu_jax.models.layers import in_slices
from gvu_jax.models.umm import image_hidden
from gvu_jax.rl.optimizer import learning_rate


def group_advantages(rewards, group_size, eps=1e-4, scale_by_std=True):
  """A = (r - mean_G r) / (std_G r + eps) within each prompt's group of G samples.

  std is the unbiased sample std (as torch.std in the reference / TRL). A group
  whose rewards are all equal gets advantage 0, never NaN. scale_by_std=False
  keeps A = r - mean_G r (Dr. GRPO): a group whose samples are all about as
  good then no longer gets advantages as large as a group with a real winner.
  """
  if group_size < 2:
    raise InputError(f"gvu.group_size={group_size}: GRPO needs at least 2 samples per "
                     "prompt to form an advantage")
  r = rewards.reshape(-1, group_size).astype(jnp.float32)
  tied = r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True)
  centred = jnp.where(tied, 0.0, r - r.mean(axis=1, keepdims=True))  # exact 0, no fp32 residue
  if not scale_by_std:
    return centred.reshape(-1)
  std = jnp.sqrt(jnp.sum(centred ** 2, axis=1, keepdims=True) / (group_size - 1))
  return (centred / (std + eps)).reshape(-1)


def grpo_token_loss(logp, old_logp, ref_logp, advantages, clip_eps, beta):
  """Per-token GRPO loss [B, N] and its statistics.

  rho_t = exp(logp - old);  loss_t = -min(rho_t A, clip(rho_t, 1-e, 1+e) A) + beta KL_t
  KL_t  = exp(ref - logp) - (ref - logp) - 1        (k3 estimator, >= 0)
  """
  a = advantages[:, None]
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  policy_term = -jnp.minimum(ratio * a, clipped * a)
  log_ref_ratio = ref_logp - logp
  kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
  stats = {"kl": kl.mean(), "clip_fraction": jnp.mean((ratio != clipped).astype(jnp.float32)),
           "ratio": ratio.mean()}
  return policy_term + beta * kl, stats


# Image tokens per chunk of the log-softmax (token_logprobs).
LOGIT_CHUNK = 64


def token_logprobs(model, prompt_ids, prompt_valid, codes, chunk=LOGIT_CHUNK, group_size=1):
  """log pi(code_t | prompt, code_<t) [B, N] and the per-token entropy [B, N].
  group_size=G: rows come in groups of G sharing a prompt, whose pass runs once per
  group (umm.image_hidden).

  The image head and its log-softmax run over `chunk` tokens at a time (a scan
  whose body is rematerialized), so no more than [B, chunk, codebook] float32
  logits exist at once, in the forward or the backward pass; the whole
  [B, N, codebook] would be 3 x 4 B N V bytes (logits, log-softmax, gradient):
  14.5 GB for 128 rows of Janus (N = 576, V = 16384)."""
  hidden = image_hidden(model, prompt_ids, prompt_valid, codes, group_size)
  head_def, head_state = nnx.split(model)

  def one_chunk(state, h, target):
    logp_all = jax.nn.log_softmax(nnx.merge(head_def, state).image_head(h))
    logp = jnp.take_along_axis(logp_all, target[..., None], -1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy

  return in_slices(one_chunk, head_state, (hidden, codes), max(1, min(chunk, codes.shape[1])))


def make_grpo_step(graphdef, roles, tx, *, clip_eps, beta, grad_accum, schedule=None,
                   layout=None, state=None, shared_prompt_group=1):
  """Returns step(state, frozen, batch) -> (state, metrics), pure and jit-compiled
  with the state donated (and, given a sharding.Layout and the state, kept in the
  layout's shardings). `batch` holds prompt_ids, prompt_valid, codes,
  advantages, ref_logp and old_logp (or no old_logp: mu=1 is exactly on-policy,
  so the old policy is the current one held constant). Given the optimizer's
  `schedule`, metrics["lr"] is the learning rate this update applied.
  shared_prompt_group=G: each micro-batch's rows come in whole groups of G that
  share a prompt (token_logprobs), which then runs once per group."""

  def loss_fn(trainable, frozen, micro):
    model = nnx.merge(graphdef, roles.policy(trainable, frozen))
    logp, entropy = token_logprobs(model, micro["prompt_ids"], micro["prompt_valid"],
                                   micro["codes"], group_size=shared_prompt_group)
    old = micro.get("old_logp", jax.lax.stop_gradient(logp))
    per_token, stats = grpo_token_loss(logp, old, micro["ref_logp"], micro["advantages"],
                                       clip_eps, beta)
    stats["entropy"] = entropy.mean()
    return per_token.mean(axis=1).mean(), stats   # mean over image tokens, then over rows

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, frozen, batch):
    micro_batches = jax.tree.map(
        lambda x: x.reshape((grad_accum, -1) + x.shape[1:]), batch)

    def accumulate(carry, micro):
      return jax.tree.map(jnp.add, carry, grad_fn(state["trainable"], frozen, micro)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(grad_fn, state["trainable"], frozen, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(accumulate, zeros, micro_batches)
    (loss, stats), grads = jax.tree.map(lambda x: x / grad_accum, total)
    updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss, gradient or update skips the step: weights and optimizer stay.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = dict(stats, loss=loss, grad_norm=grad_norm, skipped=1.0 - finite)
    if schedule is not None:
      metrics["lr"] = learning_rate(schedule, state["opt_state"])
    return dict(state, trainable=keep(trainable, state["trainable"]),
                opt_state=keep(opt_state, state["opt_state"]), step=state["step"] + 1), metrics

  return jax.jit(step, donate_argnums=0, out_shardings=state_out_shardings(layout, state))


def shared_prompt_group(gvu_config):
  """The rows per prompt whose teacher-forced passes share the prompt's pass
  (gvu.shared_prompt_pass; 1: none)."""
  return gvu_config.group_size if gvu_config.get("shared_prompt_pass", False) else 1


def state_out_shardings(layout, state):
  """out_shardings of a (state, metrics) step: the state where it already lives,
  metrics replicated; None (the compiler's choice) without a layout."""
  if layout is None:
    return None
  return layout.for_params(state), layout.replicated


def make_logp_fn(graphdef, roles, with_policy, shared_prompt_group=1):
  """Jit-compiled (trainable, frozen, batch) -> log-probs of the sampled tokens,
  computed once per rollout: {"ref_logp"} and, for mu > 1 inner iterations,
  {"old_logp"} under the policy that sampled them. shared_prompt_group: as
  make_grpo_step's."""

  def logps(trainable, frozen, batch):
    logp = lambda params: token_logprobs(
        nnx.merge(graphdef, params), batch["prompt_ids"], batch["prompt_valid"],
        batch["codes"], group_size=shared_prompt_group)[0]
    out = {"ref_logp": logp(roles.reference(trainable, frozen))}
    if with_policy:
      out["old_logp"] = logp(roles.policy(trainable, frozen))
    return out

  return jax.jit(logps)
