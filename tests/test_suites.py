"""Understanding benchmarks (data/suites.py) read from fixture files written here
in POPE's, MME's and SEED-Bench's own layouts, prepared as TFDS datasets and read
back; their metrics (evaluation/suite_scores.py) against hand-computed values.
No network."""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gvu_jax.data import builders, suites
from gvu_jax.data.suites import Question
from gvu_jax.evaluation import suite_scores
from gvu_jax.infra.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (2, 2), (200, 30, 30)).save(path)


def jsonl(rows):
  return "".join(json.dumps(r) + "\n" for r in rows)


# --- fixtures in the benchmarks' layouts -------------------------------------

POPE = {
    "random": [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg",
         "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000002.jpg",
         "text": "Is there a dog in the image?", "label": "no"}],
    "popular": [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg",
         "text": "Is there a person in the image?", "label": "no"},
        {"question_id": 7, "image": "COCO_val2014_000000000003.jpg",
         "text": "Is there a car in the image?", "label": "yes"}],
    "adversarial": [   # its second question is also random's first, as POPE repeats some
        {"question_id": 3, "image": "COCO_val2014_000000000002.jpg",
         "text": "Is there a ski in the image?", "label": "no"},
        {"question_id": 4, "image": "COCO_val2014_000000000001.jpg",
         "text": "Is there a snowboard in the image?", "label": "yes"}]}


def write_pope(d):
  for split, rows in POPE.items():
    text = jsonl(rows)
    if split == "popular":   # a blank line and CRLF endings, as an edited file may have
      text = text.replace("\n", "\r\n") + "\n"
    (d / f"coco_pope_{split}.json").write_text(text, newline="")
  for k in (1, 2, 3):
    image(str(d / "val2014" / f"COCO_val2014_00000000000{k}.jpg"))


def pope_expected(d):
  out = []
  for split, rows in POPE.items():
    for line, r in enumerate(rows, 1):
      out.append(Question("pope", split, f"{split}/{r['question_id']}",
                          f"{d}/val2014/{r['image']}", r["text"], (), r["label"], split,
                          r["image"], f"{d}/coco_pope_{split}.json:{line}"))
  return out


MME_FOLDERED = ("posters", "celebrity", "scene", "landmark", "artwork")   # images/ + txt folder


def mme_files():
  """subtask -> [(image file name, text of its .txt)]."""
  files = {}
  for split, subtasks in suites.MME_SUBTASKS.items():
    ext = ".jpg" if split == "perception" else ".png"
    for s in subtasks:
      files[s] = [(f"{s}_1{ext}", f"Is this {s}? Please answer yes or no.\tYes\n"
                                  f"Is this not {s}? Please answer yes or no.\tNo\n")]
  files["existence"] = [   # names sort b before c; CRLF; a blank line; no final newline
      ("c.jpg", "Is there a cat?\tNo\r\n\r\nIs there a dog?\tYes"),
      ("b.png", "Is there a bird?\tYES\n")]
  return files


def write_mme(d):
  root = d / suites.MME_ROOT
  for s, entries in mme_files().items():
    qa, images = (root / s / "questions_answers_YN", root / s / "images") \
        if s in MME_FOLDERED else (root / s, root / s)
    for name, text in entries:
      image(str(images / name))
      os.makedirs(qa, exist_ok=True)
      (qa / (os.path.splitext(name)[0] + ".txt")).write_text(text, newline="")


def mme_expected(d):
  root = f"{d}/{suites.MME_ROOT}"
  out = []
  for split, subtasks in suites.MME_SUBTASKS.items():
    for s in subtasks:
      qa, images = (f"{root}/{s}/questions_answers_YN", f"{root}/{s}/images") \
          if s in MME_FOLDERED else (f"{root}/{s}", f"{root}/{s}")
      entries = sorted(mme_files()[s])
      for name, text in entries:
        txt = f"{qa}/{os.path.splitext(name)[0]}.txt"
        k = 0
        for line, content in enumerate(text.split("\n"), 1):
          content = content.rstrip("\r")
          if content:
            question, answer = content.split("\t")
            out.append(Question("mme", split, f"{s}/{name}/{k}", f"{images}/{name}", question,
                                (), answer.lower(), s, f"{s}/{name}", f"{txt}:{line}"))
            k += 1
  return out


SEED = {
    "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
    "questions": [
        {"answer": "A", "choice_a": "a beach", "choice_b": "a forest", "choice_c": "a city",
         "choice_d": "a desert", "data_id": "1454426_2591111986.jpg", "data_type": "image",
         "question": "Where is the photo taken?", "question_id": "101669",
         "question_type_id": 1},
        {"answer": "D", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4",
         "data_id": "v1/clip.mp4", "data_type": "video", "question": "How many?",
         "question_id": "900001", "question_type_id": 1},
        {"answer": "C", "choice_a": "a cat", "choice_b": "a dog", "choice_c": "a horse",
         "choice_d": "", "data_id": "2.jpg", "data_type": "image",
         "question": "What animal is it?", "question_id": "101670", "question_type_id": 2}]}


def write_seed(d, document=None):
  (d / suites.SEED_FILE).write_text(json.dumps(document or SEED, indent=1))
  for name in ("1454426_2591111986.jpg", "2.jpg"):
    image(str(d / suites.SEED_IMAGES / name))


def seed_expected(d):
  f = f"{d}/{suites.SEED_FILE}"
  return [
      Question("seed_bench", "test", "101669", f"{d}/SEED-Bench-image/1454426_2591111986.jpg",
               "Where is the photo taken?", ("a beach", "a forest", "a city", "a desert"), "A",
               "Scene Understanding", "1454426_2591111986.jpg", f"{f}: questions[0]"),
      Question("seed_bench", "test", "101670", f"{d}/SEED-Bench-image/2.jpg",
               "What animal is it?", ("a cat", "a dog", "a horse", ""), "C",
               "Instance Identity", "2.jpg", f"{f}: questions[2]")]


WRITERS = {"pope": write_pope, "mme": write_mme, "seed_bench": write_seed}
EXPECTED = {"pope": pope_expected, "mme": mme_expected, "seed_bench": seed_expected}
READERS = {"pope": suites.read_pope, "mme": suites.read_mme,
           "seed_bench": suites.read_seed_bench}


@pytest.fixture(scope="module")
def manual_dirs(tmp_path_factory):
  """A manual_dir per suite, in the benchmark's own layout."""
  out = {}
  for name, write in WRITERS.items():
    out[name] = tmp_path_factory.mktemp(name)
    write(out[name])
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, manual_dirs):
  """Every suite prepared once; (data_dir, {name: questions read back})."""
  d = tmp_path_factory.mktemp("tfds")
  return d, {name: suites.questions(name, str(d), str(manual_dirs[name])) for name in WRITERS}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_readers_give_the_exact_questions(manual_dirs, name):
  got = READERS[name](str(manual_dirs[name]))
  assert got == EXPECTED[name](manual_dirs[name])
  assert len({q.id for q in got}) == len(got)


def test_mme_reads_both_layouts_and_normalises_answers(manual_dirs):
  d = manual_dirs["mme"]
  got = {q.id: q for q in suites.read_mme(str(d))}
  assert [(q.id, q.answer) for q in got.values() if q.group == "existence"] == [
      ("existence/b.png/0", "yes"), ("existence/c.jpg/0", "no"), ("existence/c.jpg/1", "yes")]
  assert got["existence/c.jpg/1"].source.endswith("existence/c.txt:3")
  assert got["artwork/artwork_1.jpg/0"].image == \
      f"{d}/{suites.MME_ROOT}/artwork/images/artwork_1.jpg"
  assert {q.split for q in got.values() if q.group == "code_reasoning"} == {"cognition"}
  assert len(got) == 2 * 14 + 1


def mme_variant(d, variant):
  """MME's files as common downloads hold them: another level (MME_Benchmark/)
  under the release folder, or answer lines ending in white space (a tab too)."""
  write_mme(d)
  root = d / suites.MME_ROOT
  if variant == "inner level":
    inner = d / "inner"
    shutil.move(str(root), str(inner))
    os.makedirs(root)
    shutil.move(str(inner), str(root / suites.MME_INNER))
    return str(root / suites.MME_INNER)
  ending = {"trailing tab": "\t", "trailing spaces and tab": " \t  "}[variant]
  for path in root.rglob("*.txt"):
    lines = path.read_bytes().decode().split("\n")
    path.write_text("\n".join(l.replace("\r", "") + ending if l.strip() else l for l in lines),
                    newline="")
  return str(root)


@pytest.mark.parametrize("variant", ["inner level", "trailing tab", "trailing spaces and tab"])
def test_mme_reads_what_common_downloads_hold(tmp_path, variant):
  read_from = mme_variant(tmp_path, variant)
  expected = [x._replace(image=x.image.replace(f"{tmp_path}/{suites.MME_ROOT}", read_from),
                         source=x.source.replace(f"{tmp_path}/{suites.MME_ROOT}", read_from))
              for x in mme_expected(tmp_path)]
  assert suites.read_mme(str(tmp_path)) == expected


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_builders_round_trip_and_prepare_once(data_dir, manual_dirs, tmp_path, name):
  d, read_back = data_dir
  assert read_back[name] == READERS[name](str(manual_dirs[name]))
  b = suites.builder(name, str(d))
  assert b.is_prepared() and list(b.info.splits) and b.info.disable_shuffling
  assert set(b.info.splits) == set(b.SPLITS)
  # prepared already: an empty manual_dir is never read
  assert suites.questions(name, str(d), str(tmp_path)) == read_back[name]


def test_a_removed_image_is_named_at_read_time(manual_dirs, tmp_path):
  m = tmp_path / "pope"
  shutil.copytree(manual_dirs["pope"], m)
  suites.questions("pope", str(tmp_path / "tfds"), str(m))
  os.remove(m / "val2014" / "COCO_val2014_000000000002.jpg")
  with pytest.raises(InputError) as e:
    suites.questions("pope", str(tmp_path / "tfds"))
  assert str(e.value) == (
      f"{m}/coco_pope_random.json:2: image {m}/val2014/COCO_val2014_000000000002.jpg no "
      f"longer exists (it did when pope was prepared in {tmp_path}/tfds/pope/1.0.0); put it "
      "back or prepare pope again")


def test_names_and_prompt_sets_are_kept_apart(tmp_path):
  with pytest.raises(InputError, match=r"^unknown benchmark 'popee'; expected one of "
                                       r"\['mme', 'pope', 'seed_bench'\]$"):
    suites.questions("popee", str(tmp_path))
  assert isinstance(builders.builder("pope", str(tmp_path)), suites.Pope)
  assert isinstance(builders.builder("seed_bench", str(tmp_path)), suites.SeedBench)
  assert not any(builders.is_builder_spec(n) for n in ("pope", "mme:perception", "seed_bench"))
  with pytest.raises(InputError, match=r"^mme:perception: mme is an understanding benchmark"):
    builders.data_sources("mme:perception", str(tmp_path))


def test_a_missing_file_fails_prepare_and_leaves_it_unprepared(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "README").write_text("not the files")
  with pytest.raises(InputError, match=rf"^{tmp_path}/manual/coco_pope_random.json: no such "
                                       r"file; expected POPE's file from "):
    builders.prepare("pope", str(tmp_path / "tfds"), str(tmp_path / "manual"))
  assert not suites.builder("pope", str(tmp_path / "tfds")).is_prepared()
  with pytest.raises(InputError, match=rf"^{tmp_path}/empty/{suites.SEED_FILE}: no such file"):
    suites.questions("seed_bench", str(tmp_path / "tfds"), str(tmp_path / "empty"))


# --- bad input, one row per class of fault -----------------------------------


def edit(path, old, new):
  text = path.read_text()
  assert old in text, (path, old)
  path.write_text(text.replace(old, new, 1))


def seed_with(**changes):
  """SEED's document with questions[2] changed (None: the field removed)."""
  def write(d):
    doc = json.loads(json.dumps(SEED))
    for k, v in changes.items():
      if v is None:
        del doc["questions"][2][k]
      else:
        doc["questions"][2][k] = v
    write_seed(d, doc)
  return write


RANDOM, EXISTENCE = "coco_pope_random.json", f"{suites.MME_ROOT}/existence"
BAD = [
    # POPE
    ("pope", lambda d: os.remove(d / "val2014" / "COCO_val2014_000000000002.jpg"),
     "{d}/coco_pope_random.json:2: no image {d}/val2014/COCO_val2014_000000000002.jpg"),
    ("pope", lambda d: edit(d / RANDOM, '"image"', '"image": 1, , "x"'),
     "{d}/coco_pope_random.json:1: not valid JSON (Expecting property name enclosed in "
     "double quotes at column 32)"),
    ("pope", lambda d: edit(d / RANDOM, '"label": "yes"', '"lable": "yes"'),
     "{d}/coco_pope_random.json:1: no 'label' field (fields: ['image', 'lable', "
     "'question_id', 'text'])"),
    ("pope", lambda d: edit(d / RANDOM, '"text": "Is there a dog in the image?"', '"text": 5'),
     "{d}/coco_pope_random.json:2: 'text' is a JSON number, expected a string"),
    ("pope", lambda d: edit(d / RANDOM, '"label": "no"', '"label": "maybe"'),
     "{d}/coco_pope_random.json:2: label must be 'yes' or 'no', got 'maybe'"),
    ("pope", lambda d: edit(d / RANDOM, '"question_id": 2', '"question_id": 1'),
     "{d}/coco_pope_random.json:2: duplicate question_id '1' (first on line 1)"),
    ("pope", lambda d: os.remove(d / "coco_pope_adversarial.json"),
     "{d}/coco_pope_adversarial.json: no such file; expected POPE's file from "
     "github.com/AoiDragon/POPE (output/coco/), one JSON object a line"),
    ("pope", lambda d: shutil.rmtree(d / "val2014"),
     "{d}/val2014: no such folder; expected COCO's val2014 images, which POPE's questions "
     "are about"),
    ("pope", lambda d: (d / RANDOM).write_text("\n\n"),
     "{d}/coco_pope_random.json: the file holds no questions"),
    # MME
    ("mme", lambda d: edit(d / EXISTENCE / "c.txt", "cat?\tNo", "cat? No"),
     "{d}/" + EXISTENCE + "/c.txt:1: expected 'question<TAB>Yes' or 'question<TAB>No', "
     "got no tab"),
    ("mme", lambda d: edit(d / EXISTENCE / "c.txt", "cat?\tNo", "cat?\tNo\tYes"),
     "{d}/" + EXISTENCE + "/c.txt:1: expected 'question<TAB>Yes' or 'question<TAB>No', "
     "got 3 tab-separated fields"),
    ("mme", lambda d: edit(d / EXISTENCE / "c.txt", "dog?\tYes", "dog?\tMaybe"),
     "{d}/" + EXISTENCE + "/c.txt:3: the answer must be 'Yes' or 'No', got 'Maybe'"),
    ("mme", lambda d: os.remove(d / EXISTENCE / "b.png"),
     "{d}/" + EXISTENCE + "/b.txt: no image b.jpg or b.png in {d}/" + EXISTENCE),
    ("mme", lambda d: shutil.rmtree(d / suites.MME_ROOT / "count"),
     "{d}/" + suites.MME_ROOT + "/count: no such folder; expected MME's count subtask "
     "(MME is scored over all 14 subtasks)"),
    ("mme", lambda d: shutil.rmtree(d / suites.MME_ROOT / "artwork" / "images"),
     "{d}/" + suites.MME_ROOT + "/artwork/images: no such folder; expected the images beside "
     "questions_answers_YN/"),
    ("mme", lambda d: shutil.rmtree(d / suites.MME_ROOT),
     "{d}/" + suites.MME_ROOT + ": no such folder; expected MME's release folder, one folder "
     "per subtask"),
    # SEED-Bench
    ("seed_bench", lambda d: edit(d / suites.SEED_FILE, '"choice_a": "a cat",', '"choice_a": ,'),
     "{d}/" + suites.SEED_FILE + ":"),   # the line of the fault; checked below
    ("seed_bench", seed_with(choice_c=None),
     "{d}/" + suites.SEED_FILE + ": questions[2]: no 'choice_c' field (fields: ['answer', "
     "'choice_a', 'choice_b', 'choice_d', 'data_id', 'data_type', 'question', 'question_id', "
     "'question_type_id'])"),
    ("seed_bench", seed_with(question=["What?"]),
     "{d}/" + suites.SEED_FILE + ": questions[2]: 'question' is a JSON array, expected a string"),
    ("seed_bench", seed_with(answer="E"),
     "{d}/" + suites.SEED_FILE + ": questions[2]: answer must be one of 'A', 'B', 'C', 'D', "
     "got 'E'"),
    ("seed_bench", seed_with(question_id="101669"),
     "{d}/" + suites.SEED_FILE + ": questions[2]: duplicate question_id '101669' (first at "
     "questions[0])"),
    ("seed_bench", seed_with(data_id="3.jpg"),
     "{d}/" + suites.SEED_FILE + ": questions[2]: no image {d}/" + suites.SEED_IMAGES
     + "/3.jpg"),
    ("seed_bench", seed_with(question_type_id=9),
     "{d}/" + suites.SEED_FILE + ": questions[2]: question_type_id 9 is not one of "
     "question_type's ids [1, 2]"),
    ("seed_bench", lambda d: os.remove(d / suites.SEED_FILE),
     "{d}/" + suites.SEED_FILE + ": no such file; expected SEED-Bench's question file "
     "(huggingface.co/datasets/AILab-CVC/SEED-Bench)"),
    ("seed_bench", lambda d: shutil.rmtree(d / suites.SEED_IMAGES),
     "{d}/" + suites.SEED_IMAGES + ": no such folder; expected SEED-Bench's images"),
]


BAD_IDS = ['pope-missing-image',
           'pope-malformed-json',
           'pope-missing-field',
           'pope-non-string',
           'pope-unknown-label',
           'pope-duplicate-id',
           'pope-missing-file',
           'pope-missing-images-folder',
           'pope-no-questions',
           'mme-no-tab',
           'mme-three-fields',
           'mme-answer-maybe',
           'mme-missing-image',
           'mme-missing-subtask',
           'mme-missing-images-folder',
           'mme-missing-root',
           'seed-malformed-json',
           'seed-missing-field',
           'seed-non-string',
           'seed-answer-e',
           'seed-duplicate-id',
           'seed-missing-image',
           'seed-unknown-type',
           'seed-missing-file',
           'seed-missing-images-folder']


@pytest.mark.parametrize("name, fault, expected", BAD, ids=BAD_IDS)
def test_bad_input_is_one_line_naming_the_place(manual_dirs, tmp_path, name, fault, expected):
  d = tmp_path / "manual"
  shutil.copytree(manual_dirs[name], d)
  fault(d)
  with pytest.raises(InputError) as e:
    READERS[name](str(d))
  message, expected = str(e.value), expected.format(d=d)
  assert "\n" not in message
  if expected.endswith(".json:"):   # SEED's malformed JSON: the document's line and column
    line, column = next((i, l.index(": ,") + 3) for i, l in enumerate(
        (d / suites.SEED_FILE).read_text().split("\n"), 1) if '"choice_a": ,' in l)
    assert message == f"{expected}{line}: not valid JSON (Expecting value at column {column})"
  else:
    assert message == expected


# --- metrics -----------------------------------------------------------------


def q(answer, split="s", group="g", image_id="", suite="pope", options=()):
  return Question(suite, split, "", "", "", options, answer, group, image_id, "f:1")


def test_pope_metrics_by_hand():
  qs = ([q(a, "random") for a in ("yes", "yes", "no", "no")]
        + [q(a, "popular") for a in ("yes", "yes", "no")])
  preds = ["yes", "no", "yes", "no"] + ["no", "no", "NO "]
  got = suite_scores.pope(qs, preds)
  assert list(got) == ["random", "popular", "mean", "pooled"]
  assert got["random"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                           "yes_ratio": 0.5, "questions": 4}
  # no predicted yes: precision, recall and F1 are 0.0, not a division by zero
  assert got["popular"] == {"accuracy": pytest.approx(1 / 3), "precision": 0.0, "recall": 0.0,
                            "f1": 0.0, "yes_ratio": 0.0, "questions": 3}
  # the splits' mean, as papers report POPE
  assert got["mean"] == pytest.approx({"accuracy": (0.5 + 1 / 3) / 2, "precision": 0.25,
                                       "recall": 0.25, "f1": 0.25, "yes_ratio": 0.25})
  # every answer at once: TP 1, FP 1, FN 3, TN 2
  assert got["pooled"] == pytest.approx({"accuracy": 3 / 7, "precision": 0.5, "recall": 0.25,
                                         "f1": 1 / 3, "yes_ratio": 2 / 7, "questions": 7})
  assert json.loads(json.dumps(got)) == got
  reported = {"f1": 0.25, "accuracy": (0.5 + 1 / 3) / 2, "yes_ratio": 0.25, "pooled f1": 1 / 3,
              "random f1": 0.5, "popular f1": 0.0}
  assert suite_scores.reported("pope", got) == pytest.approx(reported)
  # a pope.json written when the pooled figures were named "overall" reports the same
  old = {k: v for k, v in got.items() if k not in ("mean", "pooled")} | {"overall": got["pooled"]}
  assert suite_scores.reported("pope", old) == pytest.approx(reported)


def test_mme_metrics_by_hand():
  qs = [q("yes", "perception", "existence", "e/1"), q("no", "perception", "existence", "e/1"),
        q("yes", "perception", "existence", "e/2"), q("no", "perception", "existence", "e/2"),
        q("yes", "perception", "count", "c/1"), q("no", "perception", "count", "c/1"),
        q("yes", "cognition", "code_reasoning", "k/1"),
        q("no", "cognition", "code_reasoning", "k/1")]
  preds = ["yes", "no", "yes", "yes", "yes", "no", "yes", "yes"]
  got = suite_scores.mme(qs, preds)
  assert got["subtasks"] == {
      "existence": {"accuracy": 0.75, "accuracy_plus": 0.5, "score": 125.0, "questions": 4,
                    "images": 2},
      "count": {"accuracy": 1.0, "accuracy_plus": 1.0, "score": 200.0, "questions": 2,
                "images": 1},
      "code_reasoning": {"accuracy": 0.5, "accuracy_plus": 0.0, "score": 50.0, "questions": 2,
                         "images": 1}}
  assert (got["perception"], got["cognition"], got["total"]) == (325.0, 50.0, 375.0)
  assert list(suite_scores.reported("mme", got).items()) == [
      ("total", 375.0), ("perception", 325.0), ("cognition", 50.0)]


def test_multiple_choice_by_group():
  opts = ("a", "b", "c", "d")
  qs = [q(a, group=g, suite="seed_bench", options=opts)
        for a, g in (("A", "Scene"), ("B", "Scene"), ("C", "Scene"), ("D", "Identity"))]
  got = suite_scores.multiple_choice(qs, ["A", "b", "D", "A"])
  assert got == {"accuracy": 0.5, "questions": 4,
                 "by_group": {"Scene": pytest.approx(2 / 3), "Identity": 0.0}}
  assert suite_scores.SCORES["seed_bench"] is suite_scores.multiple_choice
  assert list(suite_scores.reported("seed_bench", got)) == ["accuracy", "Scene", "Identity"]


def test_predictions_must_be_answers():
  with pytest.raises(ValueError, match=r"^f:1: prediction 'maybe' for question ; expected one "
                                       r"of \['yes', 'no'\]$"):
    suite_scores.pope([q("yes")], ["maybe"])
  with pytest.raises(ValueError, match=r"prediction 'E'"):
    suite_scores.multiple_choice([q("A", options=("a", "b", "c", "d"))], ["E"])
  with pytest.raises(ValueError, match=r"^2 questions but 1 predictions$"):
    suite_scores.mme([q("yes"), q("no")], ["yes"])
  with pytest.raises(InputError, match=r"^unknown benchmark 'mmmu'"):
    suite_scores.reported("mmmu", {})


yes_no = st.sampled_from(["yes", "no"])
images = st.lists(st.tuples(yes_no, yes_no, yes_no, yes_no, st.sampled_from(["random", "popular"]),
                            st.sampled_from(["existence", "count"])), min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(rows=images)
def test_metrics_properties(rows):
  """Per image, as MME has them: two questions (answers, predictions), a POPE split
  and an MME subtask."""
  qs, preds = [], []
  for k, (a1, a2, p1, p2, split, subtask) in enumerate(rows):
    qs += [q(a1, split, subtask, f"img{k}"), q(a2, split, subtask, f"img{k}")]
    preds += [p1, p2]
  got = suite_scores.pope(qs, preds)
  right = sum(x.answer == p for x, p in zip(qs, preds))
  assert got["pooled"]["accuracy"] == pytest.approx(right / len(qs))
  assert all(0.0 <= v["f1"] <= 1.0 and 0.0 <= v["yes_ratio"] <= 1.0 for v in got.values())
  splits = {k: v for k, v in got.items() if k not in ("mean", "pooled")}
  assert sum(v["questions"] for v in splits.values()) == len(qs)
  for key in ("accuracy", "f1", "yes_ratio"):
    assert got["mean"][key] == pytest.approx(sum(v[key] for v in splits.values()) / len(splits))
  scores = suite_scores.mme(qs, preds)
  for s in scores["subtasks"].values():
    assert s["accuracy_plus"] <= s["accuracy"] + 1e-12
  assert scores["total"] == pytest.approx(sum(s["score"] for s in scores["subtasks"].values()))


# --- the prepare command -----------------------------------------------------


def prepare_command(*args):
  return subprocess.run([sys.executable, "-m", "gvu_jax.data.builders", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_prepare_command_prepares_a_suite(manual_dirs, tmp_path):
  run = prepare_command("--name=pope", f"--manual_dir={manual_dirs['pope']}",
                        f"--data_dir={tmp_path}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip().startswith("pope: {")
  assert ast.literal_eval(run.stdout.split(": ", 1)[1].split(" in ")[0]) == {
      "random": 2, "popular": 2, "adversarial": 2}
  assert len(run.stdout.strip().splitlines()) == 1 and not run.stderr.strip(), run.stderr


@pytest.mark.slow
def test_prepare_command_missing_file_is_one_line(manual_dirs, tmp_path):
  m = tmp_path / "manual"
  shutil.copytree(manual_dirs["seed_bench"], m)
  os.remove(m / suites.SEED_FILE)
  run = prepare_command("--name=seed_bench", f"--manual_dir={m}", f"--data_dir={tmp_path}/t")
  assert run.returncode == 2 and run.stderr.startswith(f"error: {m}/{suites.SEED_FILE}: no "
                                                       "such file; expected SEED-Bench's")
  assert len(run.stderr.strip().splitlines()) == 1, run.stderr
