"""The understanding benchmarks' official metrics (data/suites.py), from the
questions and the model's answer to each: "yes"/"no" for a yes/no question, an
option letter for a multiple-choice one, the answer text for an open one, or
"unknown" (a reply out of format, evaluation/protocols.py), which is never right.
Every result is JSON-ready: Python floats and ints.

  pope        per split: accuracy, precision, recall, F1 and the ratio of "yes"
              answers, "yes" the positive class (POPE's evaluate.py; an unknown
              answer to a "yes" question is a miss, as VLMEvalKit counts it);
              `mean`, the mean of the splits' figures, as papers and LLaVA's
              scripts report POPE; `pooled`, the same figures over every split's
              answers at once
  mme         per subtask: accuracy, accuracy+ (images whose questions are all
              right) and score = 100 (accuracy + accuracy+); perception and
              cognition are the sums of their subtasks' scores, total both
              (MME's tools/calculation.py)
  seed_bench  accuracy, overall and per question type
  gqa         accuracy (exact match of the read answer with GQA's), overall and
              per structural type (GQA's eval.py)
  mmbench     circular accuracy: a question counts only when every rotation of
              its options is answered right (MMBench's CircularEval), overall and
              per category; `first_pass`, the accuracy of the unrotated copies
"""

from gvu_jax.data.suites import LETTERS, YES_NO
from gvu_jax.evaluation import protocols
from gvu_jax.infra.errors import InputError


def _div(a, b):
  return float(a / b) if b else 0.0


def _checked(questions, predictions):
  """(question, normalised prediction) pairs; a prediction that is not an
  answer the question allows, nor unknown, is an error (the scorer made it, not
  the user)."""
  if len(questions) != len(predictions):
    raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
  pairs = []
  for q, p in zip(questions, predictions):
    kind = protocols.kind(q)
    if kind == "open":
      pairs.append((q, str(p).strip().lower()))
      continue
    if kind == "choice":
      p, allowed = str(p).strip().upper(), LETTERS[:len(q.options)]
    else:
      p, allowed = str(p).strip().lower(), YES_NO
    p = protocols.UNKNOWN if p.lower() == protocols.UNKNOWN else p
    if p not in (*allowed, protocols.UNKNOWN):
      raise ValueError(f"{q.source}: prediction {p!r} for question {q.id}; expected one of "
                       f"{[*allowed, protocols.UNKNOWN]}")
    pairs.append((q, p))
  return pairs


def _groups(pairs, key):
  """Pairs by key(question), in the order the keys first appear."""
  out = {}
  for q, p in pairs:
    out.setdefault(key(q), []).append((q, p))
  return out


def _binary(pairs):
  """POPE's metrics over yes/no pairs, "yes" the positive class."""
  tp = sum(q.answer == "yes" and p == "yes" for q, p in pairs)
  fp = sum(q.answer == "no" and p == "yes" for q, p in pairs)
  fn = sum(q.answer == "yes" and p != "yes" for q, p in pairs)
  tn = sum(q.answer == "no" and p == "no" for q, p in pairs)
  precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
  return {"accuracy": _div(tp + tn, len(pairs)), "precision": precision, "recall": recall,
          "f1": _div(2 * precision * recall, precision + recall),
          "yes_ratio": _div(tp + fp, len(pairs)), "questions": len(pairs)}


def pope(questions, predictions):
  pairs = _checked(questions, predictions)
  out = {split: _binary(ps) for split, ps in _groups(pairs, lambda q: q.split).items()}
  out["mean"] = _means(out)
  out["pooled"] = _binary(pairs)
  return out


def _means(per_split):
  """The mean over POPE's splits of each of their figures."""
  keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
  return {k: _div(sum(v[k] for v in per_split.values()), len(per_split)) for k in keys}


POPE_SUMMARIES = ("mean", "pooled", "overall")   # (overall: the pooled figures, as once named)


def mme(questions, predictions):
  pairs = _checked(questions, predictions)
  subtasks, totals = {}, {"perception": 0.0, "cognition": 0.0}
  for name, ps in _groups(pairs, lambda q: q.group).items():
    images = {}
    for q, p in ps:
      images[q.image_id] = images.get(q.image_id, True) and p == q.answer
    accuracy = _div(sum(p == q.answer for q, p in ps), len(ps))
    accuracy_plus = _div(sum(images.values()), len(images))
    subtasks[name] = {"accuracy": accuracy, "accuracy_plus": accuracy_plus,
                      "score": 100 * (accuracy + accuracy_plus), "questions": len(ps),
                      "images": len(images)}
    totals[ps[0][0].split] = totals.get(ps[0][0].split, 0.0) + subtasks[name]["score"]
  return {"subtasks": subtasks, **totals, "total": sum(totals.values())}


def multiple_choice(questions, predictions):
  return _accuracy(_checked(questions, predictions), lambda q: q.answer)


def _accuracy(pairs, reference):
  """Accuracy overall and per group: a prediction is right when it equals
  reference(question)."""
  right = lambda ps: _div(sum(p == reference(q) for q, p in ps), len(ps))
  return {"accuracy": right(pairs), "questions": len(pairs),
          "by_group": {g: right(ps) for g, ps in _groups(pairs, lambda q: q.group).items()}}


def open_answers(questions, predictions):
  """GQA: a read answer is right when it equals the reference answer, lower-cased."""
  return _accuracy(_checked(questions, predictions), lambda q: q.answer.strip().lower())


def circular(questions, predictions):
  """MMBench: the copies of a question (its options rotated) share its image_id;
  the question is right when every copy is."""
  pairs = _checked(questions, predictions)
  originals = _groups(pairs, lambda q: q.image_id)
  solved = {key: all(p == q.answer for q, p in ps) for key, ps in originals.items()}
  by_group = {}
  for key, ps in originals.items():
    by_group.setdefault(ps[0][0].group, []).append(solved[key])
  return {"accuracy": _div(sum(solved.values()), len(solved)), "questions": len(solved),
          "asked": len(pairs),
          "first_pass": _div(sum(ps[0][1] == ps[0][0].answer for ps in originals.values()),
                             len(originals)),
          "by_group": {g: _div(sum(v), len(v)) for g, v in by_group.items()}}


SCORES = {"pope": pope, "mme": mme, "seed_bench": multiple_choice, "gqa": open_answers,
          "mmbench": circular}


FORMAT_ROWS = {"in_format": "in format", "answer_mass": "answer mass"}   # scores["format"]


def reported(suite, scores):
  """{metric: value} of the rows a summary table shows for `suite`, the headline
  first: POPE's F1, accuracy and yes ratio (the means of the splits'), the pooled
  F1, then each split's F1; MME's total, perception and cognition scores; the
  others' accuracy, then each group's; then format adherence (in format, answer
  mass)."""
  if suite not in SCORES:
    raise InputError(f"unknown benchmark {suite!r}; expected one of {sorted(SCORES)}")
  if suite == "pope":
    splits = {k: v for k, v in scores.items() if k not in (*POPE_SUMMARIES, "format")}
    means = _means(splits)   # (from the splits: a file written before `mean` existed too)
    out = {key: means[key] for key in ("f1", "accuracy", "yes_ratio")}
    out["pooled f1"] = scores.get("pooled", scores.get("overall"))["f1"]
    out.update({f"{split} f1": v["f1"] for split, v in splits.items()})
  elif suite == "mme":
    out = {k: scores[k] for k in ("total", "perception", "cognition")}
  else:
    out = {"accuracy": scores["accuracy"], **scores["by_group"]}
  figures = scores.get("format") or {}   # (absent from files written before it was measured)
  out.update({name: figures[key] for key, name in FORMAT_ROWS.items()
              if figures.get(key) is not None})
  return {k: float(v) for k, v in out.items()}

