"""The understanding benchmarks' official metrics (data/suites.py), from the
questions and the model's prediction for each: "yes"/"no" for a yes/no question,
an option letter for a multiple-choice one. Every result is JSON-ready: Python
floats and ints.

  pope        per split: accuracy, precision, recall, F1 and the ratio of "yes"
              answers, "yes" the positive class (POPE's evaluate.py); `mean`, the
              mean of the splits' figures, as papers and LLaVA's scripts report
              POPE; `pooled`, the same figures over every split's answers at once
  mme         per subtask: accuracy, accuracy+ (images whose questions are all
              right) and score = 100 (accuracy + accuracy+); perception and
              cognition are the sums of their subtasks' scores, total both
              (MME's tools/calculation.py)
  seed_bench  accuracy, overall and per question type
"""

from gvu_jax.data.suites import LETTERS, YES_NO
from gvu_jax.infra.errors import InputError


def _div(a, b):
  return float(a / b) if b else 0.0


def _checked(questions, predictions):
  """(question, normalised prediction) pairs; a prediction that is not an
  answer the question allows is an error (the scorer made it, not the user)."""
  if len(questions) != len(predictions):
    raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
  pairs = []
  for q, p in zip(questions, predictions):
    if q.options:
      p, allowed = str(p).strip().upper(), LETTERS[:len(q.options)]
    else:
      p, allowed = str(p).strip().lower(), YES_NO
    if p not in allowed:
      raise ValueError(f"{q.source}: prediction {p!r} for question {q.id}; expected one of "
                       f"{list(allowed)}")
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
  fn = sum(q.answer == "yes" and p == "no" for q, p in pairs)
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
  pairs = _checked(questions, predictions)
  accuracy = lambda ps: _div(sum(p == q.answer for q, p in ps), len(ps))
  return {"accuracy": accuracy(pairs), "questions": len(pairs),
          "by_group": {g: accuracy(ps) for g, ps in _groups(pairs, lambda q: q.group).items()}}


SCORES = {"pope": pope, "mme": mme, "seed_bench": multiple_choice}


def reported(suite, scores):
  """{metric: value} of the rows a summary table shows for `suite`, the headline
  first: POPE's F1, accuracy and yes ratio (the means of the splits'), the pooled
  F1, then each split's F1; MME's
  total, perception and cognition scores; SEED-Bench's accuracy, then each
  question type's."""
  if suite not in SCORES:
    raise InputError(f"unknown benchmark {suite!r}; expected one of {sorted(SCORES)}")
  if suite == "pope":
    splits = {k: v for k, v in scores.items() if k not in POPE_SUMMARIES}
    means = _means(splits)   # (from the splits: a file written before `mean` existed too)
    out = {key: means[key] for key in ("f1", "accuracy", "yes_ratio")}
    out["pooled f1"] = scores.get("pooled", scores.get("overall"))["f1"]
    out.update({f"{split} f1": v["f1"] for split, v in splits.items()})
  elif suite == "mme":
    out = {k: scores[k] for k in ("total", "perception", "cognition")}
  else:
    out = {"accuracy": scores["accuracy"], **scores["by_group"]}
  return {k: float(v) for k, v in out.items()}
