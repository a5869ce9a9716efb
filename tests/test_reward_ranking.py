"""The reward's ranking of ground-truth renders against near misses (report.json's
`reward_ranking`): exact values for rewards whose answer is known."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from gvu_jax import context
from gvu_jax import world
from gvu_jax.evaluation import evaluate
from gvu_jax.world import judge


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
  return context.Context.create(synthetic.get_config("mini"), str(tmp_path_factory.mktemp("w")))


def judging_scorer(ctx, flip=False):
  """A stand-in for the model's scorer whose reward is the pixel judge's verdict
  on the prompt it is asked about (read back from the query's answer tokens)."""
  by_text = {s.text: s for s in world.all_specs()}

  def score(params, codes, query):
    ids, mask = np.asarray(query["ids"]), np.asarray(query["answer_mask"])
    start = ctx.templates.understanding(["a photo of a circle"]).answer_start
    texts = [ctx.tokenizer.decode(row[start:start + m.sum()].tolist())
             for row, m in zip(ids, mask)]
    images = world.codes_to_image(np.asarray(codes))
    verdicts = np.array([judge.judge(im, by_text[t]) for im, t in zip(images, texts)])
    reward = jnp.asarray(verdicts != flip, jnp.float32)
    return jnp.log(reward), reward, None

  return score


def test_a_reward_that_judges_ranks_every_pair_right(ctx):
  ranking = evaluate.reward_ranking(ctx, None, judging_scorer(ctx), world.all_specs())
  assert ranking == {"overall": 1.0, **{c: 1.0 for c in world.CATEGORIES}}
  flipped = evaluate.reward_ranking(ctx, None, judging_scorer(ctx, flip=True), world.all_specs())
  assert flipped == {"overall": 0.0, **{c: 0.0 for c in world.CATEGORIES}}


def test_a_reward_blind_to_the_image_is_at_chance(ctx):
  blind = lambda params, codes, query: (jnp.zeros(codes.shape[0]),) * 2 + (None,)
  ranking = evaluate.reward_ranking(ctx, None, blind, world.all_specs())
  assert ranking == {"overall": 0.5, **{c: 0.5 for c in world.CATEGORIES}}


@pytest.mark.parametrize("gap, expected", [(0.0, 0.5), (3e-8, 0.5), (4e-7, 0.5), (1e-5, 1.0),
                                           (1e-2, 1.0)])
def test_rewards_within_float_rounding_are_a_tie(ctx, gap, expected):
  """A right render whose reward exceeds the near miss's by `gap` (relative): a gap
  the summation order of another mesh can make is a tie, a real one a preference."""
  judging = judging_scorer(ctx)

  def nearly(params, codes, query):
    _, verdict, _ = judging(params, codes, query)
    reward = jnp.float32(0.3) * (1.0 + gap * verdict)
    return jnp.log(reward), reward, None

  ranking = evaluate.reward_ranking(ctx, None, nearly, world.all_specs())
  assert ranking == {"overall": expected, **{c: expected for c in world.CATEGORIES}}
