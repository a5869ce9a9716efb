"""Understanding benchmarks (POPE, MME, SEED-Bench; data/suites.py) for a
converted checkpoint and its GvU policy: does the understanding branch, which is
also the reward, still work? (docs/design.md §10)

Each question is one forward pass through the model's own understanding
template, left-padded so that every row's answer starts at the last position:

  Janus:   <bos>{system}\\n\\n<|User|>: <begin_of_image><image_placeholder>x576
           <end_of_image>\\n{question}\\n\\n<|Assistant|>:
  X-Omni:  <|im_start|>user\\n<SOM>{h} {w}<IMAGE> {the photo's h x w SigLIP-VQ
           tokens}<EOM>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

The answer is read at that position, without decoding text:
  yes/no           log p("Yes" or "yes") against log p("No" or "no"); POPE's
                   questions get " Please answer yes or no." (MME's carry it)
  multiple choice  the options listed as "A. ...", one per line, then "Answer
                   with the option's letter from the given choices directly.";
                   the letter with the highest log-probability. Letters, not
                   each option's summed log-likelihood: one pass per question
                   and no bias towards short options.
Each answer word counts every single token it takes (alone and after a space),
summed in probability. A tie goes to the first option ("yes", "A").

WORKDIR/eval/<stage>/understanding/<suite>.json holds the suite's scores
(evaluation/suite_scores.py), <suite>_answers.jsonl each question's answer and
option log-probabilities; a suite whose .json is there is not scored again.
"""

import concurrent.futures
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from gvu_jax.data import suites
from gvu_jax.data.suites import LETTERS, YES_NO
from gvu_jax.evaluation import suite_scores
from gvu_jax.evaluation.evaluate import padded_chunks
from gvu_jax.infra import files, hosts, metrics, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models.umm import text_hidden
from gvu_jax.rl.reward import word_token_ids
from gvu_jax.text import janus as janus_text

YES_NO_SUFFIX = "Please answer yes or no."
CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
YES_NO_WORDS = (("Yes", "yes"), ("No", "no"))   # the words of suites.YES_NO
LENGTH_STEP = 32   # question rows are padded to a multiple of this: few shapes, few compiles


def question_text(q):
  """The question as the model is asked it."""
  text = q.question.strip()
  if not q.options:
    return text if text.endswith(YES_NO_SUFFIX) else f"{text} {YES_NO_SUFFIX}"
  return "\n".join([text, *(f"{l}. {o}" for l, o in zip(LETTERS, q.options)), CHOICE_SUFFIX])


def answer_table(tokenizer, options):
  """Each option's words -> (token ids [C, K] int32, mask [C, K]): every single
  token that any of its words takes."""
  per_option = []
  for words in options:
    ids = sorted({i for w in words for i in word_token_ids(tokenizer, w)})
    if not ids:
      raise InputError(f"the tokenizer has no single token for the answer {words[0]!r} "
                       f"(nor {', '.join(map(repr, words[1:]))}); its answers cannot be read")
    per_option.append(ids)
  width = max(len(i) for i in per_option)
  table = np.zeros((len(options), width), np.int32)
  mask = np.zeros((len(options), width), bool)
  for c, ids in enumerate(per_option):
    table[c, :len(ids)], mask[c, :len(ids)] = ids, True
  return table, mask


def option_logprobs(model, ids, valid, image_slots, pixels, option_ids, option_mask):
  """log p(option) at the answer position (the last one): [B, C], each option
  the log of the summed probability of its tokens (`option_ids` [C, K])."""
  hidden = text_hidden(model, ids, valid, image_slots, pixels)[:, -1]
  logp = jax.nn.log_softmax(model.text_head(hidden), axis=-1)
  per_token = jnp.take(logp, option_ids, axis=1)                  # [B, C, K]
  return jax.nn.logsumexp(jnp.where(option_mask, per_token, -jnp.inf), axis=-1)


def answers(questions, logprobs):
  """The chosen answer per question: "yes"/"no", or the option letter."""
  best = np.argmax(logprobs, axis=-1)   # the first of equals
  return [YES_NO[b] if not q.options else LETTERS[b] for q, b in zip(questions, best)]


def _open(path):
  try:
    with Image.open(path) as im:
      return im.convert("RGB")
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"cannot read image {path} ({e})") from None


class _ByPath:
  """`read(question)`: what the model reads of the question's image, made once
  for the last images seen (a benchmark asks several questions of each image,
  one after another: POPE six, MME two); a problem names the question."""

  def __init__(self):
    self._cached = functools.lru_cache(maxsize=64)(self.load)

  def read(self, question):
    try:
      return self._cached(question.image)
    except InputError as e:
      raise InputError(f"{question.source}: {e}") from None


def _bucket(n):
  return -(-n // LENGTH_STEP) * LENGTH_STEP


class JanusImages(_ByPath):
  """Photos as Janus' processor prepares them (preprocessor_config.json): one
  SigLIP input [S, S, 3] each, at the fixed number of image slots."""

  def __init__(self, ctx):
    super().__init__()
    self.config = janus_text.load_preprocessor_config(ctx.config.checkpoint)
    if self.config["image_size"] != ctx.model.vision.image_size:
      raise InputError(f"{ctx.config.checkpoint}/preprocessor_config.json: image size "
                       f"{self.config['image_size']}, but the model's vision encoder reads "
                       f"{ctx.model.vision.image_size}")

  def load(self, path):
    return janus_text.preprocess([_open(path)], self.config)[0]

  def batch(self, templates, texts, items):
    """-> (ids, valid, image_slots, pixels) of one batch."""
    length = _bucket(max(templates.question_tokens(t) for t in texts))
    return (*templates.question(texts, length), np.stack(items))


class XOmniImages(_ByPath):
  """Photos as X-Omni reads them: its any-resolution transform (in patch units:
  the short side up to 24 patches, the long side down to 72), then its SigLIP-VQ
  tokens, a grid of the photo's own shape (models/siglip_vq.py)."""

  def __init__(self, ctx):
    super().__init__()
    from gvu_jax.interop import convert
    from gvu_jax.models import siglip_vq
    encoder = convert.load_image_tokenizer(ctx.config.checkpoint)
    if encoder.cfg.codebook_size > ctx.model.image_vocab_size:
      raise InputError(f"{ctx.config.checkpoint}: the image tokenizer has "
                       f"{encoder.cfg.codebook_size} codes, the model reads "
                       f"{ctx.model.image_vocab_size} (model_config.json image_vocab_size)")
    graphdef, state = nnx.split(encoder)
    self.patch = encoder.cfg.patch_size
    self.preprocess = siglip_vq.preprocess
    # one compile per photo shape
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
    self.encode = lambda pixels: np.asarray(encode(state, pixels[None]))[0]

  def pixels(self, path):
    p, image = self.patch, _open(path)
    try:
      return self.preprocess(image, short_size=24 * p, long_size=72 * p, patch_size=p,
                             min_short_size=8 * p)
    except InputError as e:
      raise InputError(f"{path}: {e}") from None

  def load(self, path):
    """The photo's token grid [h, w]."""
    return self.encode(self.pixels(path))

  def batch(self, templates, texts, grids):
    """-> (ids, valid, image_slots, codes [B, n]) of one batch, each row's image
    block holding its own grid; rows and codes padded to a multiple of 32."""
    length = _bucket(max(templates.question_tokens(t, g.shape) for t, g in zip(texts, grids)))
    codes = np.zeros((len(grids), _bucket(max(g.size for g in grids))), np.int32)
    for b, g in enumerate(grids):
      codes[b, :g.size] = g.reshape(-1)
    return (*templates.question(texts, length, [g.shape for g in grids]), codes)


def image_reader(ctx):
  """How the checkpoint's model reads a photo."""
  return {"janus": JanusImages, "xomni": XOmniImages}[ctx.model.family](ctx)


def make_scorer(graphdef, option_ids, option_mask):
  def score(params, ids, valid, image_slots, pixels):
    model = nnx.merge(graphdef, params)
    return option_logprobs(model, ids, valid, image_slots, pixels, option_ids, option_mask)
  return jax.jit(score)


def score_suite(ctx, graphdef, params, questions, images, stage, suite):
  """Every question of `suite` -> its scores; writes <suite>.json and
  <suite>_answers.jsonl into the stage's understanding/ folder."""
  directory = ctx.path("eval", stage, "understanding")
  templates, batch = ctx.templates, ctx.config.eval.batch_size
  ctx.layout.check_batch("eval.batch_size", batch)
  texts = [question_text(q) for q in questions]
  choices = max(len(q.options) for q in questions)
  words = YES_NO_WORDS if choices == 0 else [(l,) for l in LETTERS[:choices]]
  if choices and any(len(q.options) != choices for q in questions):
    raise InputError(f"{suite}: questions with {sorted({len(q.options) for q in questions})} "
                     "options in one suite; the scorer reads one set of letters")
  scorer = make_scorer(graphdef, *answer_table(ctx.tokenizer, words))
  # POPE asks some (image, question) pairs in more than one split: each distinct
  # pair is scored once, and its answer counts in every question that asks it.
  distinct = {}
  for i, key in enumerate(zip((q.image for q in questions), texts)):
    distinct.setdefault(key, i)
  rows = list(distinct.values())   # the first question asking each distinct pair
  asked = np.array([distinct[key] for key in zip((q.image for q in questions), texts)])
  bar = metrics.progress(len(rows), f"understanding {stage} {suite}")
  logprobs, tic = np.zeros((len(questions), len(words)), np.float32), time.perf_counter()

  def collect(idx, real, out):
    logprobs[[rows[i] for i in idx[:real]]] = sharding.to_host(out)[:real]
    bar.update(real)
    bar.set_postfix(q_s=f"{(idx[real - 1] + 1) / (time.perf_counter() - tic):.1f}")

  # Reading and resizing images costs about as much as a small model's pass: a
  # batch's images are read, by threads, while the device scores the one before.
  pending = None
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for idx, real in padded_chunks(len(rows), batch):
      items = list(pool.map(images.read, [questions[rows[i]] for i in idx]))
      inputs = images.batch(templates, [texts[rows[i]] for i in idx], items)
      out = scorer(params, *ctx.layout.put_batch(inputs))
      if pending:
        collect(*pending)
      pending = idx, real, out
  collect(*pending)
  bar.close()
  logprobs = logprobs[asked]   # every question gets its pair's scores
  predicted = answers(questions, logprobs)
  scores = suite_scores.SCORES[suite](questions, predicted)
  if hosts.is_main():
    lines = [json.dumps({"id": q.id, "group": q.group, "answer": q.answer, "predicted": p,
                         "logprobs": [round(float(x), 6) for x in row]})
             for q, p, row in zip(questions, predicted, logprobs)]
    files.write_atomic(os.path.join(directory, f"{suite}_answers.jsonl"), "\n".join(lines) + "\n")
    files.write_atomic(os.path.join(directory, f"{suite}.json"), json.dumps(
        {"suite": suite, "questions": len(questions), "distinct_questions": len(rows),
         "scores": scores,
         "seconds": round(time.perf_counter() - tic, 2)}, indent=1))
  return scores


def read_scores(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)["scores"]


def prepare(ctx):
  """Before anything runs: eval.understanding's suites read (prepared from
  data.manual_dir where needed) and the model's image reader -> (suites {name:
  questions}, reader), or None when no suite is asked for."""
  names = [s.strip() for s in ctx.config.eval.get("understanding", "").split(",") if s.strip()]
  if not names:
    return None
  images = image_reader(ctx)
  d = ctx.config.data
  metrics.status(f"understanding: reading {', '.join(names)}")
  return {n: suites.questions(n, d.get("tfds_dir") or None, d.get("manual_dir") or None)
          for n in dict.fromkeys(names)}, images


def run(ctx, stages, plan):
  """`stages`: [(name, graphdef, params)] -> every suite of `plan` (prepare) scored
  for each; the table (a column per stage and their difference) is added to
  WORKDIR/eval/summary.md."""
  per_suite, images = plan
  results = {}
  for stage, graphdef, params in stages:
    directory = ctx.path("eval", stage, "understanding")
    os.makedirs(directory, exist_ok=True)
    for suite, questions in per_suite.items():
      done = os.path.join(directory, f"{suite}.json")
      kept = hosts.agreed(f"understanding {stage} {suite}",
                          lambda: read_scores(done) if os.path.isfile(done) else None)
      if kept is not None:
        results[stage, suite] = kept
        metrics.status(f"understanding: {stage} {suite}: kept {done}")
        continue
      results[stage, suite] = score_suite(ctx, graphdef, params, questions, images, stage,
                                          suite)
  table = summary_table([s for s, _, _ in stages], list(per_suite), results)
  if hosts.is_main():
    summary = ctx.path("eval", "summary.md")
    before = open(summary, encoding="utf-8").read() if os.path.isfile(summary) else ""
    files.write_atomic(summary, before + "\nUnderstanding benchmarks:\n\n" + table + "\n")
    print(table)
  return results


def summary_table(stages, names, results):
  """Markdown: a row per suite's reported numbers, a column per stage, and the
  difference of the last stage from the first."""
  diff = len(stages) > 1
  head = ["suite", "metric", *stages] + ([f"{stages[-1]} - {stages[0]}"] if diff else [])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for suite in names:
    rows = [suite_scores.reported(suite, results[s, suite]) for s in stages]
    for metric in rows[0]:
      values = [r[metric] for r in rows]
      digits = 2 if max(abs(v) for v in values) >= 10 else 4   # MME's scores reach 2800
      cells = [f"{v:.{digits}f}" for v in values]
      if diff:
        cells.append(f"{values[-1] - values[0]:+.{digits}f}")
      lines.append(f"| {suite} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
