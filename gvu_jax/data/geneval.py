"""GenEval-style training prompts with their metadata, generated from GenEval's
public vocabulary: the 80 COCO object classes, ten colours, counts two to four,
four relative positions, and its six prompt templates. For users who want more
training prompts than a benchmark ships (the GvU reference trains on prompts of
this form); the held-out GenEval prompts themselves are not reproduced here.

  python -m gvu_jax.data.geneval --out=prompts.jsonl --per_tag=500 --seed=0

Each line is GenEval's metadata format, readable as `data.prompts`:
  {"tag": "counting", "include": [{"class": "dog", "count": 3}],
   "exclude": [{"class": "dog", "count": 4}], "prompt": "a photo of three dogs"}
"""

import json
import os

import numpy as np
from absl import app, flags

from gvu_jax.infra.errors import InputError

CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
    "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
          "white")
NUMBERS = {2: "two", 3: "three", 4: "four"}
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

_IRREGULAR = {"person": "people", "sheep": "sheep", "broccoli": "broccoli", "knife": "knives",
              "skis": "pairs of skis", "scissors": "pairs of scissors",
              "computer mouse": "computer mice"}


def plural(name):
  if name in _IRREGULAR:
    return _IRREGULAR[name]
  if name.endswith(("sh", "ch", "s", "x")):
    return name + "es"
  return name + "s"


def article(words):
  """'a' or 'an' before `words`."""
  return "an" if words[0] in "aeiou" else "a"


def with_article(words):
  return f"{article(words)} {words}"


def one(rng, tag):
  """One metadata record of `tag`."""
  pick = lambda options, k=1: [options[i] for i in rng.choice(len(options), k, replace=False)]
  if tag == "single_object":
    obj, = pick(CLASSES)
    return {"tag": tag, "include": [{"class": obj, "count": 1}],
            "prompt": f"a photo of {with_article(obj)}"}
  if tag == "two_object":
    a, b = pick(CLASSES, 2)
    return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}
  if tag == "counting":
    obj, = pick(CLASSES)
    n = int(rng.integers(2, 5))
    return {"tag": tag, "include": [{"class": obj, "count": n}],
            "exclude": [{"class": obj, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {plural(obj)}"}
  if tag == "colors":
    obj, = pick(CLASSES)
    color, = pick(COLORS)
    return {"tag": tag, "include": [{"class": obj, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color + ' ' + obj)}"}
  if tag == "position":
    a, b = pick(CLASSES, 2)
    relation, = pick(POSITIONS)
    # `a` is placed relative to include[0], `b`.
    return {"tag": tag, "include": [{"class": b, "count": 1},
                                    {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}"}
  if tag == "color_attr":
    a, b = pick(CLASSES, 2)
    ca, cb = pick(COLORS, 2)
    return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca},
                                    {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {with_article(ca + ' ' + a)} and {with_article(cb + ' ' + b)}"}
  raise InputError(f"geneval: unknown tag {tag!r}; expected one of {list(TAGS)}")


def generate(per_tag, seed=0, tags=TAGS, exclude_prompts=(), at_most=False):
  """`per_tag` distinct prompts of each tag, in tag order; none in `exclude_prompts`
  (e.g. a benchmark's held-out prompts). A tag with fewer distinct prompts left
  (single_object has 80 in all) is an error, or with `at_most` gives what it has."""
  rng = np.random.default_rng(seed)
  seen, out = set(exclude_prompts), []
  for tag in tags:
    made, tries = 0, 0
    while made < per_tag:
      record = one(rng, tag)
      tries += 1
      if tries > 50 * per_tag + 1000:
        if at_most:
          break
        raise InputError(f"geneval: cannot make {per_tag} distinct {tag} prompts")
      if record["prompt"] not in seen:
        seen.add(record["prompt"])
        out.append(record)
        made += 1
  return out


def main(argv):
  del argv
  out = flags.FLAGS.out
  if not out:
    raise app.UsageError("--out is required")
  if os.path.exists(out):
    raise app.UsageError(f"--out={out} exists; not overwritten")
  records = generate(flags.FLAGS.per_tag, flags.FLAGS.seed)
  with open(out, "x", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  print(f"wrote {len(records)} prompts to {out}")


if __name__ == "__main__":   # flags only when run as a program: importing defines none
  flags.DEFINE_string("out", None, "Where to write the prompts (.jsonl); never overwritten.")
  flags.DEFINE_integer("per_tag", 100, "Prompts per tag.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  app.run(main)
