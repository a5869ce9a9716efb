"""The attention implementations agree with the portable XLA reference on CPU
(splash runs in Pallas' interpreter here), forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import chex

import helpers_model as hm

from gvu_jax.infra.errors import InputError
from gvu_jax.models import attention as attn, build
from gvu_jax.models.llama import LlamaConfig
from gvu_jax.models.umm import causal_mask

B, T, H, D = 3, 40, 4, 16


def _inputs(kv_heads):
  q = jax.random.normal(jax.random.key(0), (B, T, H, D))
  k, v = (jax.random.normal(jax.random.key(i), (B, kv_heads, T, D)) for i in (1, 2))
  valid = np.ones((B, T), bool)
  valid[0, :7] = False     # left padding (generation prompts)
  valid[1, -5:] = False    # right padding (understanding queries)
  return q, k, v, causal_mask(jnp.asarray(valid))


@pytest.mark.parametrize("implementation", ["dot_product", "splash"])
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_matches_xla_forward_and_backward(implementation, kv_heads):
  q, k, v, mask = _inputs(kv_heads)
  want = attn.xla_attention(q, k, v, mask)
  got = attn.attention(q, k, v, mask, implementation)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)

  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * jnp.cos(want))
  grads_want = jax.grad(loss(attn.xla_attention), argnums=(0, 1, 2))(q, k, v)
  grads_got = jax.grad(loss(lambda *a: attn.attention(*a, implementation)),
                       argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(grads_got, grads_want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [H, 2])
@pytest.mark.parametrize("cuts", [(), (1,), (3, 4), (2, 5, 7)])
def test_cache_passes_use_xla_over_the_segments(cuts, kv_heads):
  """A KV-cache step (one query over a longer cache, held in segments) never
  reaches a fused kernel and equals XLA attention over the whole cache."""
  q, k, v, mask = _inputs(kv_heads)
  step_mask = mask[:, -1:, :]
  split = lambda x: jnp.split(x, cuts, axis=2)
  np.testing.assert_allclose(
      attn.attention(q[:, -1:], split(k), split(v), step_mask, "splash", full_pass=False),
      attn.xla_attention(q[:, -1:], k, v, step_mask), rtol=1e-6, atol=1e-6)


def test_auto_and_bad_names():
  assert attn.resolve("auto") == "xla"          # CPU: no fused kernel
  with pytest.raises(InputError, match=r"model.attention: unknown 'flash'"):
    LlamaConfig(vocab_size=8, hidden=8, layers=1, heads=1, kv_heads=1, intermediate=8,
                attention="flash")


@pytest.mark.parametrize("implementation", ["dot_product", "splash"])
def test_model_logits(implementation):
  """The whole model's teacher-forced logits equal the XLA ones (same weights: the
  kernel is a run-time choice, not part of the parameters)."""
  graphdef, params = hm.mini()
  cfg = hm.mini_cfg()
  cfg.attention = implementation
  other, other_params = build.create(cfg, 0)
  chex.assert_trees_all_equal(params, other_params)
  ids, valid = hm.prompts()
  codes = hm.random_codes(0, ids.shape[0])
  np.testing.assert_allclose(hm.image_logits(other, params, ids, valid, codes),
                             hm.image_logits(graphdef, params, ids, valid, codes), atol=1e-5)
