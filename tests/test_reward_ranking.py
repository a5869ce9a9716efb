"""The two measures of reading in report.json, exact for scorers whose answer is
known: `reward_ranking` (a ground-truth render against a near miss's, by the
reward) and `understanding` (a prompt's render among K the judge rejects for it)."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from gvu_jax import world
from gvu_jax.evaluation import evaluate
from gvu_jax.stages import context
from gvu_jax.world import judge


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
  return context.create(synthetic.get_config("mini"), str(tmp_path_factory.mktemp("w")))


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


@pytest.mark.parametrize("scorer, expected", [
    ("judge", 1.0), ("flipped judge", 0.0), ("blind", 1 / 3), ("caption prior", 1 / 3)])
def test_understanding_picks_the_render_only_by_reading_it(ctx, scorer, expected):
  """The mini preset has K = 2 wrong renders per prompt, so chance is 1/3. A scorer
  that reads only the text (here, any fixed score per prompt: a caption prior) is
  exactly at chance, because every option carries the same text."""
  assert ctx.config.eval.num_distractors == 2
  judging = judging_scorer(ctx, flip=scorer == "flipped judge")
  prior = {s.text: float(i) for i, s in enumerate(world.all_specs())}

  def score(params, codes, query):
    if scorer in ("judge", "flipped judge"):
      return judging(params, codes, query)
    if scorer == "blind":
      return (jnp.zeros(codes.shape[0]),) * 2 + (None,)
    ids, mask = np.asarray(query["ids"]), np.asarray(query["answer_mask"])
    start = ctx.templates.understanding(["a photo of a circle"]).answer_start
    logp = jnp.asarray([prior[ctx.tokenizer.decode(row[start:start + m.sum()].tolist())]
                        for row, m in zip(ids, mask)])
    return logp, jnp.exp(logp), None

  credit, specs = evaluate.understanding(ctx, None, score)
  assert judge.category_accuracy(credit, specs) == pytest.approx(
      {"overall": expected, **{c: expected for c in world.CATEGORIES}}, abs=1e-12)


def test_every_wrong_render_is_rejected_by_the_judge_for_the_prompt():
  """Each distractor prompt's scene is resampled until the true prompt is false on
  it, for every prompt of the world (position prompts need it: diagonals)."""
  rng = np.random.default_rng(0)
  for spec in world.all_specs():
    image = world.render(world.sample_scene(spec, rng))
    for wrong in world.distractors(spec, image, 4, rng):
      scene = world.rejected_scene(wrong, spec, rng)
      assert judge.judge(world.render(scene), wrong)
      assert not judge.judge(world.render(scene), spec)
