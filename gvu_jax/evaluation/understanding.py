"""Understanding benchmarks (POPE, MME, SEED-Bench, GQA, MMBench; data/suites.py)
for a converted checkpoint and its GvU policy: does the understanding branch, which
is also the reward, still work, and does it still answer in format? (docs/design.md §10)

Each question goes through the model's own understanding template, asked as the
protocol asks it (evaluation/protocols.py: `eval.understanding_protocol`),
left-padded so that every row's answer starts at the last position:

  Janus:   <bos>[{system}\\n\\n]<|User|>: <begin_of_image><image_placeholder>x576
           <end_of_image>\\n{question}\\n\\n<|Assistant|>:
  X-Omni:  <|im_start|>user\\n<SOM>{h} {w}<IMAGE> {the photo's h x w SigLIP-VQ
           tokens}<EOM>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

`eval.understanding_answers` picks how the answer is read:
  logprob   one forward pass, the answer read at that position without decoding
            text: yes/no compares log p("Yes" or "yes") with log p("No" or "no"),
            multiple choice takes the option letter with the highest
            log-probability. Each answer word counts every single token it takes
            (alone and after a space), summed in probability; a tie goes to the
            first option ("yes", "A").
  generate  the greedy reply, up to `eval.reply_tokens` tokens (a KV cache, one
            compiled loop per batch shape), read by the protocol's rule; a reply
            out of format is scored as the harness scores it (wrong).
GQA's open answers are always generated.

Format adherence, per suite and stage: `in_format`, the share of questions whose
top-1 next token (logprob) or read reply (generate) is an answer the question
allows, and `answer_mass`, the mean probability the model puts on those answers'
tokens at the answer position (both paths; none for open answers).

WORKDIR/eval/<stage>/understanding/<protocol>-<answers>/<suite>.json holds the
suite's scores (evaluation/suite_scores.py), <suite>_answers.jsonl each
question's answer, option log-probabilities and (generate) raw reply; a suite
whose .json is there is not scored again.
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
from gvu_jax.evaluation import protocols, suite_scores
from gvu_jax.evaluation.evaluate import padded_chunks
from gvu_jax.infra import files, hosts, metrics, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models.umm import greedy_text, text_hidden
from gvu_jax.rl.reward import word_token_ids
from gvu_jax.text import janus as janus_text

YES_NO_WORDS = (("Yes", "yes"), ("No", "no"))   # the words of suites.YES_NO
LENGTH_STEP = 32   # question rows are padded to a multiple of this: few shapes, few compiles


def answer_words(questions):
  """The words of each option the answer position is read for: yes/no, the
  letters of the most options any question has, or none (open answers)."""
  kinds = {protocols.kind(q) for q in questions}
  if len(kinds) > 1:
    raise InputError(f"{questions[0].suite}: questions of kinds {sorted(kinds)} in one "
                     "suite; the scorer reads one kind")
  kind = kinds.pop()
  if kind == "choice":
    return [(l,) for l in LETTERS[:max(len(q.options) for q in questions)]]
  return YES_NO_WORDS if kind == "yes_no" else []


def answer_table(tokenizer, options):
  """Each option's words -> (token ids [C, K] int32, mask [C, K]): every single
  token that any of its words takes. No options (open answers): one empty row."""
  per_option = []
  for words in options:
    ids = sorted({i for w in words for i in word_token_ids(tokenizer, w)})
    if not ids:
      raise InputError(f"the tokenizer has no single token for the answer {words[0]!r} "
                       f"(nor {', '.join(map(repr, words[1:]))}); its answers cannot be read")
    per_option.append(ids)
  width = max([len(i) for i in per_option] or [1])
  table = np.zeros((max(len(options), 1), width), np.int32)
  mask = np.zeros(table.shape, bool)
  for c, ids in enumerate(per_option):
    table[c, :len(ids)], mask[c, :len(ids)] = ids, True
  return table, mask


def read_answer_position(logits, option_ids, option_mask):
  """From the text logits at the answer position [B, vocab]: log p(option)
  [B, C], each option the log of the summed probability of its tokens
  (`option_ids` [C, K]), and the most likely next token [B]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  per_token = jnp.take(logp, option_ids, axis=1)                  # [B, C, K]
  options = jax.nn.logsumexp(jnp.where(option_mask, per_token, -jnp.inf), axis=-1)
  return options, jnp.argmax(logp, axis=-1).astype(jnp.int32)


def option_logprobs(model, ids, valid, image_slots, image, option_ids, option_mask):
  """The logprob path: one pass, read_answer_position at the last position."""
  hidden = text_hidden(model, ids, valid, image_slots, image)[:, -1]
  return read_answer_position(model.text_head(hidden), option_ids, option_mask)


def greedy_reply(model, ids, valid, image_slots, image, steps, option_ids, option_mask):
  """The generate path: each query's greedy reply, `steps` tokens [B, steps]
  (models/umm.py greedy_text), and read_answer_position at its first."""
  tokens, first_logits = greedy_text(model, ids, valid, image_slots, image, steps)
  return (tokens, *read_answer_position(first_logits, option_ids, option_mask))


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


def make_scorer(graphdef, option_ids, option_mask, reply_tokens=0):
  """Jitted (params, ids, valid, image_slots, image) -> (option log-probs [B, C],
  top-1 next token [B]) (logprob path), or (reply tokens [B, reply_tokens],
  option log-probs, top-1 token) when reply_tokens > 0 (generate path)."""
  def score(params, ids, valid, image_slots, image):
    model = nnx.merge(graphdef, params)
    if reply_tokens:
      return greedy_reply(model, ids, valid, image_slots, image, reply_tokens, option_ids,
                          option_mask)
    return option_logprobs(model, ids, valid, image_slots, image, option_ids, option_mask)
  return jax.jit(score)


def question_templates(ctx, protocol):
  """The templates a protocol asks questions with (Janus without its system
  prompt under vlmevalkit; X-Omni's system turn is its model option)."""
  if ctx.model.family == "janus" and not protocols.keeps_system_prompt(protocol):
    return ctx.templates.without_system_prompt()
  return ctx.templates


def variant(config):
  """(protocol, answer path) of eval.understanding_protocol / _answers."""
  e = config.eval
  return protocols.check(e.understanding_protocol), e.understanding_answers


def suite_dir(ctx, stage):
  """WORKDIR/eval/<stage>/understanding/<protocol>-<answers>/: one folder per variant."""
  return ctx.path("eval", stage, "understanding", "-".join(variant(ctx.config)))


def reply_text(tokenizer, tokens, stop_ids):
  """A reply's text: its tokens up to the first stop token, decoded."""
  tokens = list(tokens)
  cut = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
  return tokenizer.decode(tokens[:cut], skip_special_tokens=True)


def read_answers(questions, logprobs, top1, option_ids, replies, protocol, option_mask=None):
  """Each question's answer and whether it is in format, and the probability at
  the answer position on its options' tokens (None for open answers). logprob
  path (replies None): the most likely of the question's own options, in
  format when the top-1 token is one of theirs (`option_ids` where
  `option_mask`, answer_table); generate path: the reply read by the protocol's
  rule, in format unless it is protocols.UNKNOWN."""
  option_mask = np.ones(option_ids.shape, bool) if option_mask is None else option_mask
  allowed = {n: set(option_ids[:n][option_mask[:n]].tolist())   # tokens of the first n options
             for n in range(len(option_ids) + 1)}
  predicted, in_format, mass = [], [], []
  for i, q in enumerate(questions):
    k = protocols.kind(q)
    n = len(q.options) if k == "choice" else len(YES_NO)
    if replies is None:
      best = int(np.argmax(logprobs[i, :n]))   # the first of equals
      predicted.append(LETTERS[best] if k == "choice" else YES_NO[best])
      in_format.append(int(top1[i]) in allowed[n])
    else:
      predicted.append(protocols.read_reply(q, replies[i], protocol))
      in_format.append(predicted[-1] != protocols.UNKNOWN)
    mass.append(None if k == "open" else float(np.exp(logprobs[i, :n]).sum()))
  return predicted, in_format, mass


def format_figures(in_format, mass):
  """A suite's format adherence: the share in format and the mean answer mass."""
  known = [m for m in mass if m is not None]
  return {"in_format": float(np.mean(in_format)),
          "answer_mass": float(np.mean(known)) if known else None}


def score_suite(ctx, graphdef, params, questions, images, stage, suite):
  """Every question of `suite` -> its scores; writes <suite>.json and
  <suite>_answers.jsonl into the stage's understanding/<protocol>-<answers>/."""
  protocol, path = variant(ctx.config)
  directory = suite_dir(ctx, stage)
  batch = ctx.config.eval.batch_size
  ctx.layout.check_batch("eval.batch_size", batch)
  templates = question_templates(ctx, protocol)
  texts = [protocols.question_text(q, protocol) for q in questions]
  words = answer_words(questions)
  table, mask = answer_table(ctx.tokenizer, words)
  generate = path == "generate" or not words   # open answers are generated
  scorer = make_scorer(graphdef, table, mask, ctx.config.eval.reply_tokens if generate else 0)
  # POPE asks some (image, question) pairs in more than one split: each distinct
  # pair is scored once, and its answer counts in every question that asks it.
  keys = list(zip((q.image for q in questions), texts))
  distinct = {}
  for i, key in enumerate(keys):
    distinct.setdefault(key, i)
  rows = list(distinct.values())   # the first question asking each distinct pair
  asked = np.array([distinct[key] for key in keys])
  bar = metrics.progress(len(rows), f"understanding {stage} {suite}")
  logprobs = np.zeros((len(questions), len(table)), np.float32)
  top1 = np.zeros(len(questions), np.int32)
  tokens = np.zeros((len(questions), ctx.config.eval.reply_tokens if generate else 0), np.int32)
  tic = time.perf_counter()

  def collect(idx, real, out):
    host = [sharding.to_host(x)[:real] for x in out]
    at = [rows[i] for i in idx[:real]]
    if generate:
      tokens[at] = host.pop(0)
    logprobs[at], top1[at] = host
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
  seconds = time.perf_counter() - tic
  # every question gets its pair's scores
  logprobs, top1, tokens = logprobs[asked], top1[asked], tokens[asked]
  replies = None
  if generate:
    stops = {templates.eos_id, templates.pad_id}
    replies = [reply_text(ctx.tokenizer, row, stops) for row in tokens]
  predicted, in_format, mass = read_answers(questions, logprobs, top1, table, replies, protocol,
                                            mask)
  scores = suite_scores.SCORES[suite](questions, predicted)
  scores["format"] = format_figures(in_format, mass)
  if hosts.is_main():
    answers = [{"id": q.id, "group": q.group, "answer": q.answer, "predicted": predicted[i],
                "in_format": in_format[i],
                "logprobs": [round(float(x), 6) for x in logprobs[i, :len(words)]],
                **({"reply": replies[i]} if replies is not None else {})}
               for i, q in enumerate(questions)]
    write_suite(directory, suite, answers, {
        "suite": suite, "protocol": protocol, "answers": "generate" if generate else "logprob",
        "questions": len(questions), "distinct_questions": len(rows), "scores": scores,
        "seconds": round(seconds, 2), "seconds_per_1000": round(1000 * seconds / len(rows), 2)})
  return scores


def write_suite(directory, suite, answers, record):
  """<suite>_answers.jsonl (a line an answer), then <suite>.json (the record whose
  presence marks the suite done)."""
  files.write_atomic(os.path.join(directory, f"{suite}_answers.jsonl"),
                     "".join(json.dumps(a) + "\n" for a in answers))
  files.write_atomic(os.path.join(directory, f"{suite}.json"), json.dumps(record, indent=1))


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
  for each under the configured protocol and answer path; the table (a column
  per stage and their difference, format adherence included) is added to
  WORKDIR/eval/summary.md."""
  per_suite, images = plan
  protocol, path = variant(ctx.config)
  results = {}
  for stage, graphdef, params in stages:
    directory = suite_dir(ctx, stage)
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
    files.write_atomic(summary, before + f"\nUnderstanding benchmarks ({protocol} protocol, "
                       f"{path} answers):\n\n" + table + "\n")
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
