"""The pretraining step's losses on the embedded world, against the reward's own
log-likelihoods computed apart (reward.answer_token_logprobs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import synthetic
from gvu_jax import world
from gvu_jax.data import batches
from gvu_jax.models import build
from gvu_jax.rl import optimizer
from gvu_jax.rl.reward import answer_token_logprobs
from gvu_jax.stages import pretrain
import helpers_model as hm


@pytest.fixture(scope="module")
def setup():
  c = synthetic.get_config("mini").pretrain
  tx, schedule = optimizer.make_optimizer(c, c.steps)
  graphdef, params = hm.mini()
  # Two single-object prompts (each the other's near miss) and a counting prompt
  # with no neighbour among them: valid and invalid ranking rows.
  specs = [s for s in world.all_specs() if s.text in (
      "a photo of a circle", "a photo of a square", "a photo of two circles")]
  batch = batches.supervised_batch(hm.templates(), specs, 8, np.random.default_rng(3), 0.0,
                                   0.3, near_miss_images=True)
  batch = jax.tree.map(jnp.asarray, batch)
  answer_start = hm.templates().understanding(["a photo of a circle"]).answer_start
  image_tokenizer = build.image_tokenizer(hm.mini_cfg())
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}

  def run(weight, with_negatives=True):
    step = pretrain.make_train_step(graphdef, image_tokenizer, tx, schedule, answer_start,
                                    near_miss_ranking=weight)
    b = batch if with_negatives else {k: v for k, v in batch.items() if k != "near_miss_codes"}
    return step(jax.tree.map(jnp.copy, state), b)

  def caption_loglik(codes):
    model = nnx.merge(graphdef, params)
    logp = answer_token_logprobs(model, batch["query_ids"], batch["query_valid"],
                                 batch["image_slots"], image_tokenizer.decode(codes, model),
                                 batch["caption_mask"], answer_start)
    return logp.sum(-1)

  return run, caption_loglik, batch


def test_near_miss_ranking_is_bradley_terry_on_the_caption_likelihood(setup):
  weight = 0.5
  run, caption_loglik, batch = setup
  _, plain = run(0.0, with_negatives=False)
  _, ranked = run(weight)
  margin = caption_loglik(batch["caption_codes"]) - caption_loglik(batch["near_miss_codes"])
  valid = np.asarray(batch["near_miss_valid"])
  assert 0 < valid.sum() < len(valid)   # invalid rows (no near miss in the split) are left out
  np.testing.assert_allclose(ranked["ranking_loss"], jax.nn.softplus(-margin)[valid].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(ranked["ranking_accuracy"], (margin > 0)[valid].mean())
  # the other losses are those of the step without negatives
  for key in ("t2i_loss", "i2t_loss"):
    np.testing.assert_allclose(ranked[key], plain[key], rtol=1e-5, err_msg=key)
  np.testing.assert_allclose(ranked["loss"], plain["loss"] + weight * ranked["ranking_loss"],
                             rtol=1e-5)
  assert "ranking_loss" not in plain

