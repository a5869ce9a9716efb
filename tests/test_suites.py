"""Understanding benchmarks (data/suites.py) read from fixture files written here
in POPE's, MME's, SEED-Bench's, GQA's and MMBench's own layouts, prepared as TFDS
datasets and read back; their metrics (evaluation/suite_scores.py) against
hand-computed values. No network."""

import ast
import base64
import csv
import io
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


GQA_RECORD = {   # every field of a record of GQA's file, as the file has them
    "semantic": [{"operation": "select", "dependencies": [], "argument": "sky (2486325)"},
                 {"operation": "choose color", "dependencies": [0], "argument": "blue|white"}],
    "entailed": ["201307252"], "equivalent": ["201307251"],
    "question": "Is the sky blue or white?", "imageId": "n161313", "isBalanced": True,
    "groups": {"global": "color", "local": "10c-sky_color"}, "answer": "blue",
    "semanticStr": "select: sky (2486325)->choose color: blue|white [0]",
    "annotations": {"answer": {}, "question": {"2": "2486325"}, "fullAnswer": {"1": "2486325"}},
    "types": {"detailed": "chooseAttr", "semantic": "attr", "structural": "choose"},
    "fullAnswer": "The sky is blue."}
GQA = {
    "201307251": GQA_RECORD,
    "20968379": {"question": "Who is wearing the shirt?", "imageId": "n235859",
                 "answer": "man", "fullAnswer": "The man is wearing a shirt.",
                 "types": {"detailed": "relS", "semantic": "rel", "structural": "query"}},
    "201640614": {"question": "Are there both cups and bottles in the picture?",
                  "imageId": "n161313", "answer": "no",
                  "fullAnswer": "No, there is a cup but no bottles.",
                  "types": {"detailed": "existAndC", "semantic": "obj",
                            "structural": "logical"}}}


def write_gqa(d, document=None):
  """GQA's questions as its file has them: one JSON object on one line."""
  (d / suites.GQA_FILE).write_text(json.dumps(GQA if document is None else document))
  for image_id in ("n161313", "n235859"):
    image(str(d / suites.GQA_IMAGES / f"{image_id}.jpg"))


def gqa_expected(d):
  f = f"{d}/{suites.GQA_FILE}"
  return [
      Question("gqa", "testdev", "201307251", f"{d}/images/n161313.jpg",
               "Is the sky blue or white?", (), "blue", "choose", "n161313", f"{f}: '201307251'"),
      Question("gqa", "testdev", "20968379", f"{d}/images/n235859.jpg",
               "Who is wearing the shirt?", (), "man", "query", "n235859", f"{f}: '20968379'"),
      Question("gqa", "testdev", "201640614", f"{d}/images/n161313.jpg",
               "Are there both cups and bottles in the picture?", (), "no", "logical",
               "n161313", f"{f}: '201640614'")]


def image_bytes(kind, color):
  out = io.BytesIO()
  Image.new("RGB", (3, 2), color).save(out, kind)
  return out.getvalue()


MMB_IMAGES = {241: image_bytes("PNG", (10, 20, 30)), 312: image_bytes("JPEG", (250, 250, 250)),
              1024: image_bytes("PNG", (0, 0, 200))}
MMB_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
               "source", "l2-category", "comment", "split"]
MMB = [   # the questions; the file also holds VLMEvalKit's shifted copies of them
    {"index": "241", "question": "Which category does this image belong to?", "hint": "",
     "A": "Oil Painting", "B": "Sketch", "C": "Digital art", "D": "Photo", "answer": "D",
     "category": "image_style", "source": "MMBench", "l2-category": "coarse_perception",
     "comment": "", "split": "dev"},
    {"index": "312", "question": 'Is the "plate" on the left of the cup?', "hint": "nan",
     "A": "yes", "B": "no", "C": "", "D": "nan", "answer": "B",
     "category": "spatial_relationship", "source": "MMBench", "l2-category": "relation_reasoning",
     "comment": "nan", "split": "dev"},
    {"index": "1024", "question": "Which of these states is farthest north?",
     "hint": "Figure: a map.\nLook at the map.", "A": "West Virginia", "B": "Louisiana",
     "C": "Arizona", "D": "", "answer": "A", "category": "geography", "source": "scienceqa",
     "l2-category": "logic_reasoning", "comment": "", "split": "dev"}]


def mmbench_rows(rows, copies=True):
  """The TSV's rows: the questions (their images in base64) and, as VLMEvalKit's
  file has them, each one's shifts r >= 1 at index + r * 1e6, the image a
  reference to the question's index."""
  out = [{**r, "image": base64.b64encode(MMB_IMAGES[int(r["index"])]).decode()}
         if "image" not in r else dict(r) for r in rows]
  for r in rows if copies else ():
    letters = [c for c in "ABCD" if r[c] not in ("", "nan")]
    for shift in range(1, len(letters)):
      copy = {**r, "index": str(int(r["index"]) + shift * 10 ** 6), "image": r["index"],
              "answer": letters[(letters.index(r["answer"]) - shift) % len(letters)]}
      for i, c in enumerate(letters):
        copy[c] = r[letters[(i + shift) % len(letters)]]
      out.append(copy)
  return out


def write_tsv(path, rows, columns=MMB_COLUMNS):
  with open(path, "w", newline="") as f:   # as pandas writes a TSV
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    w.writerows([[r.get(c, "") for c in columns] for r in rows])


def write_mmbench(d, rows=MMB, copies=True, name=suites.MMBENCH_FILES[0]):
  write_tsv(d / name, mmbench_rows(rows, copies))


def mmbench_expected(d, images, name=suites.MMBENCH_FILES[0]):
  f = f"{d}/{name}"
  style = ("Oil Painting", "Sketch", "Digital art", "Photo")
  spatial, states = ("yes", "no"), ("West Virginia", "Louisiana", "Arizona")
  hint = "Figure: a map.\nLook at the map."
  question = lambda index, r, options, answer, group, ext, line, hint="": Question(
      "mmbench", "dev", f"{index}/{r}", f"{images}/{index}.{ext}", MMB_QUESTIONS[index], options,
      answer, group, str(index), f"{f}:{line}", hint)
  return [
      question(241, 0, style, "D", "image_style", "png", 2),
      question(241, 1, ("Sketch", "Digital art", "Photo", "Oil Painting"), "C", "image_style",
               "png", 2),
      question(241, 2, ("Digital art", "Photo", "Oil Painting", "Sketch"), "B", "image_style",
               "png", 2),
      question(241, 3, ("Photo", "Oil Painting", "Sketch", "Digital art"), "A", "image_style",
               "png", 2),
      question(312, 0, spatial, "B", "spatial_relationship", "jpg", 3),
      question(312, 1, ("no", "yes"), "A", "spatial_relationship", "jpg", 3),
      question(1024, 0, states, "A", "geography", "png", 4, hint),
      question(1024, 1, ("Louisiana", "Arizona", "West Virginia"), "C", "geography", "png", 4,
               hint),
      question(1024, 2, ("Arizona", "West Virginia", "Louisiana"), "B", "geography", "png", 4,
               hint)]


MMB_QUESTIONS = {int(r["index"]): r["question"] for r in MMB}


def read_mmbench(manual_dir):
  """MMBench's reader as these tests call it: images decoded beside manual_dir."""
  return suites.read_mmbench(manual_dir, f"{manual_dir}_images")


ALL_WRITERS = {"pope": write_pope, "mme": write_mme, "seed_bench": write_seed,   # end to end
               "gqa": write_gqa, "mmbench": write_mmbench}            # in test_understanding.py too
EXPECTED = {"pope": pope_expected, "mme": mme_expected, "seed_bench": seed_expected,
            "gqa": gqa_expected, "mmbench": lambda d: mmbench_expected(d, f"{d}_images")}
READERS = {"pope": suites.read_pope, "mme": suites.read_mme,
           "seed_bench": suites.read_seed_bench, "gqa": suites.read_gqa,
           "mmbench": read_mmbench}


@pytest.fixture(scope="module")
def manual_dirs(tmp_path_factory):
  """A manual_dir per suite, in the benchmark's own layout."""
  out = {}
  for name, write in ALL_WRITERS.items():
    out[name] = tmp_path_factory.mktemp(name)
    write(out[name])
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, manual_dirs):
  """Every suite prepared once; (data_dir, {name: questions read back})."""
  d = tmp_path_factory.mktemp("tfds")
  return d, {name: suites.questions(name, str(d), str(manual_dirs[name]))
             for name in ALL_WRITERS}


@pytest.mark.parametrize("name", sorted(ALL_WRITERS))
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


@pytest.mark.parametrize("name", sorted(ALL_WRITERS))
def test_builders_round_trip_and_prepare_once(data_dir, manual_dirs, tmp_path, name):
  d, read_back = data_dir
  if name == "mmbench":   # its images decoded beside the prepared datasets
    assert read_back[name] == mmbench_expected(manual_dirs[name], f"{d}/mmbench_images")
  else:
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
      f"longer exists (it did when pope was prepared in {tmp_path}/tfds/pope/1.1.0); put it "
      "back or prepare pope again")


def test_names_and_prompt_sets_are_kept_apart(tmp_path):
  with pytest.raises(InputError, match=r"^unknown benchmark 'popee'; expected one of "
                                       r"\['gqa', 'mmbench', 'mme', 'pope', 'seed_bench'\]$"):
    suites.questions("popee", str(tmp_path))
  assert isinstance(builders.builder("pope", str(tmp_path)), suites.Pope)
  assert isinstance(builders.builder("seed_bench", str(tmp_path)), suites.SeedBench)
  assert isinstance(builders.builder("gqa", str(tmp_path)), suites.Gqa)
  assert builders.builder("mmbench", str(tmp_path)).name == "mmbench"
  assert suites.KINDS == {"pope": "yes_no", "mme": "yes_no", "seed_bench": "choice",
                          "gqa": "open", "mmbench": "choice"}
  assert set(suites.KINDS) == set(suites.SUITES)
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


def gqa_with(qid="20968379", **changes):
  """GQA's file with record `qid` changed (None: the field removed)."""
  def write(d):
    doc = json.loads(json.dumps(GQA))
    for k, v in changes.items():
      if v is None:
        del doc[qid][k]
      else:
        doc[qid][k] = v
    write_gqa(d, doc)
  return write


def mmbench_with(at, /, **changes):
  """MMBench's file with the question of index `at` changed (its copies as they
  were)."""
  def write(d):
    rows = mmbench_rows(MMB)
    for r in rows:
      if r["index"] == str(at):
        r.update(changes)
    write_tsv(d / suites.MMBENCH_FILES[0], rows)
  return write


def other_image_there(d):
  os.makedirs(f"{d}_images")
  with open(f"{d}_images/241.png", "wb") as f:
    f.write(image_bytes("PNG", (1, 2, 3)))


def b64(raw):
  return base64.b64encode(raw).decode()


RANDOM, EXISTENCE = "coco_pope_random.json", f"{suites.MME_ROOT}/existence"
GQA_F, MMB_F = "{d}/" + suites.GQA_FILE, "{d}/" + suites.MMBENCH_FILES[0]
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
    # GQA
    ("gqa", lambda d: os.remove(d / "images" / "n235859.jpg"),
     GQA_F + ": '20968379': no image {d}/images/n235859.jpg"),
    ("gqa", lambda d: edit(d / suites.GQA_FILE, '{"201307251"', '{201307251'),
     GQA_F + ":1: not valid JSON (Expecting property name enclosed in double quotes at "
     "column 2)"),
    ("gqa", lambda d: write_gqa(d, list(GQA.values())),
     GQA_F + ": expected a JSON object, got array"),
    ("gqa", lambda d: write_gqa(d, {**GQA, "20968379": "Who is wearing the shirt?"}),
     GQA_F + ": '20968379': expected a JSON object, got string"),
    ("gqa", gqa_with(answer=None),
     GQA_F + ": '20968379': no 'answer' field (fields: ['fullAnswer', 'imageId', 'question', "
     "'types'])"),
    ("gqa", gqa_with(imageId=235859),
     GQA_F + ": '20968379': 'imageId' is a JSON number, expected a string"),
    ("gqa", gqa_with(answer=" "), GQA_F + ": '20968379': empty 'answer'"),
    ("gqa", gqa_with(types="query"),
     GQA_F + ": '20968379': 'types' must be a JSON object, got string"),
    ("gqa", gqa_with(types={"detailed": "relS", "semantic": "rel"}),
     GQA_F + ": '20968379': types: no 'structural' field (fields: ['detailed', 'semantic'])"),
    ("gqa", lambda d: (d / suites.GQA_FILE).write_text(""),
     GQA_F + ": the file holds no questions"),
    ("gqa", lambda d: (d / suites.GQA_FILE).write_text("{}\n"),
     GQA_F + ": the file holds no questions"),
    ("gqa", lambda d: os.remove(d / suites.GQA_FILE),
     GQA_F + ": no such file; expected GQA's testdev-balanced questions "
     "(cs.stanford.edu/people/dorarad/gqa/, questions1.2.zip)"),
    ("gqa", lambda d: shutil.rmtree(d / "images"),
     "{d}/images: no such folder; expected GQA's images, <imageId>.jpg"),
    # MMBench
    ("mmbench", lambda d: os.remove(d / suites.MMBENCH_FILES[0]),
     "{d}: none of MMBench_DEV_EN.tsv (VLMEvalKit's), mmbench_dev_en_20231003.tsv or "
     "mmbench_dev_20230712.tsv (github.com/open-compass/MMBench) is there; expected MMBench's "
     "English dev split, a TSV with the images in base64"),
    ("mmbench", lambda d: write_tsv(d / suites.MMBENCH_FILES[0], mmbench_rows(MMB),
                                    [c for c in MMB_COLUMNS if c != "category"]),
     MMB_F + ":1: the header has no 'category' column (columns: ['index', 'question', 'hint', "
     "'A', 'B', 'C', 'D', 'answer', 'image', 'source', 'l2-category', 'comment', 'split'])"),
    ("mmbench", lambda d: edit(d / suites.MMBENCH_FILES[0], "spatial_relationship\t",
                               "spatial_relationship\t\t"),
     MMB_F + ":3: 15 tab-separated fields, expected the header's 14"),
    ("mmbench", mmbench_with(312, index="3l2"),
     MMB_F + ":3: 'index' must be a non-negative integer, got '3l2'"),
    ("mmbench", mmbench_with(1024, index="241"),
     MMB_F + ":4: duplicate index 241 (first on line 2)"),
    ("mmbench", mmbench_with(241, C="nan"),
     MMB_F + ":2: option C is empty but D is not; expected the options in A, B, C, D with none "
     "left out"),
    ("mmbench", mmbench_with(312, B=""), MMB_F + ":3: 1 option; expected 2 to 4 (columns A to D)"),
    ("mmbench", mmbench_with(312, answer="C"),
     MMB_F + ":3: answer must be one of 'A', 'B' (the row's options), got 'C'"),
    ("mmbench", mmbench_with(1024, question=""), MMB_F + ":4: empty 'question'"),
    ("mmbench", mmbench_with(312, image=" "), MMB_F + ":3: empty 'image'"),
    ("mmbench", mmbench_with(312, image="iVBORw0K!GgoAAAANSUhEUg"),
     MMB_F + ":3: 'image' is not base64 (character '!' at position 8)"),
    ("mmbench", mmbench_with(241, image=b64(b"not an image")),
     MMB_F + ":2: 'image' is 12 bytes in base64 that are no image file PIL reads (they begin "
     "b'not an i')"),
    ("mmbench", mmbench_with(241, image=b64(MMB_IMAGES[241][:50])),
     MMB_F + ":2: 'image' is a PNG image that does not decode (image file is truncated)"),
    ("mmbench", mmbench_with(1024, image="999"),
     MMB_F + ":4: 'image' is 999, which names no question of the file with an image of its "
     "own; expected an image in base64 or such an index"),
    ("mmbench", other_image_there,
     MMB_F + ":2: {d}_images/241.png exists and holds another image than this row's; remove "
     "it (or prepare into another data_dir) and prepare again"),
    ("mmbench", lambda d: (d / suites.MMBENCH_FILES[0]).write_bytes(
        (d / suites.MMBENCH_FILES[0]).read_bytes().replace(b"Sketch", b"Sk\xe9tch", 1)),
     MMB_F + ":2: not UTF-8 (byte 0xe9 at column 63)"),
    ("mmbench", lambda d: (d / suites.MMBENCH_FILES[0]).write_text(""),
     MMB_F + ": the file is empty; expected a header row naming the columns index, question, "
     "A, B, answer, category, image"),
    ("mmbench", lambda d: write_tsv(d / suites.MMBENCH_FILES[0], []),
     MMB_F + ": the file holds no questions"),
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
           'seed-missing-images-folder',
           'gqa-missing-image',
           'gqa-malformed-json',
           'gqa-not-an-object',
           'gqa-record-not-an-object',
           'gqa-missing-field',
           'gqa-non-string',
           'gqa-empty-answer',
           'gqa-types-not-an-object',
           'gqa-no-structural-type',
           'gqa-empty-file',
           'gqa-no-questions',
           'gqa-missing-file',
           'gqa-missing-images-folder',
           'mmbench-missing-file',
           'mmbench-missing-column',
           'mmbench-extra-field',
           'mmbench-bad-index',
           'mmbench-duplicate-index',
           'mmbench-option-gap',
           'mmbench-one-option',
           'mmbench-answer-not-an-option',
           'mmbench-empty-question',
           'mmbench-empty-image',
           'mmbench-not-base64',
           'mmbench-not-an-image',
           'mmbench-truncated-image',
           'mmbench-unknown-image-reference',
           'mmbench-other-image-there',
           'mmbench-not-utf8',
           'mmbench-empty-file',
           'mmbench-no-questions']


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


def test_mmbench_images_are_the_tsvs_and_kept_when_prepared_again(manual_dirs, tmp_path):
  m, tfds_dir = manual_dirs["mmbench"], tmp_path / "tfds"
  before = sorted(os.listdir(m))
  first = suites.questions("mmbench", str(tfds_dir), str(m))
  images = tfds_dir / suites.MMBENCH_IMAGES
  assert sorted(os.listdir(images)) == ["1024.png", "241.png", "312.jpg"]
  assert {q.image for q in first} == {str(p) for p in images.iterdir()}
  for index, raw in MMB_IMAGES.items():
    path = next(images.glob(f"{index}.*"))
    assert path.read_bytes() == raw
    with Image.open(path) as got, Image.open(io.BytesIO(raw)) as want:
      assert (got.format, got.size, got.tobytes()) == (want.format, want.size, want.tobytes())
  kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images.iterdir()}
  shutil.rmtree(tfds_dir / "mmbench")   # prepared again: the images there are kept as they are
  assert suites.questions("mmbench", str(tfds_dir), str(m)) == first
  assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images.iterdir()} == kept
  assert sorted(os.listdir(m)) == before   # nothing written into manual_dir


@pytest.mark.parametrize("original", suites.MMBENCH_FILES[1:])
def test_mmbench_reads_the_original_release_and_image_references(tmp_path, original):
  """MMBench's own releases, here without shifted copies (they are made all the
  same), a question whose image cell names another question's index (as
  VLMEvalKit's files may), and VLMEvalKit's file read first when both are there."""
  m, images = tmp_path / "manual", tmp_path / "images"
  m.mkdir()
  write_mmbench(m, [r if r["index"] != "1024" else {**r, "image": "241"} for r in MMB],
                copies=False, name=original)
  got = suites.read_mmbench(str(m), str(images))
  assert got == [q._replace(image=q.image.replace("1024.png", "241.png"))
                 for q in mmbench_expected(m, images, original)]
  assert sorted(os.listdir(images)) == ["241.png", "312.jpg"]
  write_mmbench(m)
  assert suites.read_mmbench(str(m), str(images)) == mmbench_expected(m, images)


def test_a_record_without_hint_reads_with_an_empty_one():
  q = Question("gqa", "testdev", "1", "/i/n1.jpg", "Is it?", (), "no", "verify", "n1", "f: '1'")
  assert q.hint == ""
  record = {k: v.encode() for k, v in suites._record(q).items() if k != "hint"}
  assert suites._question(record) == q
  assert suites._question({k: v.encode() for k, v in suites._record(
      q._replace(hint="Read the map.")).items()}).hint == "Read the map."


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


def test_gqa_metrics_by_hand():
  qs = [q(a, group=g, suite="gqa") for a, g in (("red", "query"), ("yes", "verify"),
                                                ("left", "choose"), ("no", "verify"))]
  got = suite_scores.open_answers(qs, ["Red", "yes", "unknown", "yes"])
  assert got == {"accuracy": 0.5, "questions": 4,
                 "by_group": {"query": 1.0, "verify": 0.5, "choose": 0.0}}
  assert list(suite_scores.reported("gqa", got | {"format": {"in_format": 0.75,
                                                            "answer_mass": None}}).items()) == [
      ("accuracy", 0.5), ("query", 1.0), ("verify", 0.5), ("choose", 0.0), ("in format", 0.75)]


def test_mmbench_circular_by_hand():
  """Three questions asked once per rotation of their options: solved only when
  every rotation is right; first_pass reads the unrotated copies alone."""
  rows = [("1", "A", "X", "A"), ("1", "B", "X", "B"),                      # 2 options, solved
          ("2", "C", "Y", "C"), ("2", "A", "Y", "A"), ("2", "B", "Y", "C"),  # 3, one miss
          ("3", "A", "X", "unknown"), ("3", "B", "X", "B")]                  # out of format once
  qs = [q(a, group=g, image_id=i, suite="mmbench", options=("o",) * (2 if i != "2" else 3))
        for i, a, g, _ in rows]
  got = suite_scores.circular(qs, [p for *_, p in rows])
  assert got == {"accuracy": pytest.approx(1 / 3), "questions": 3, "asked": 7,
                 "first_pass": pytest.approx(2 / 3), "by_group": {"X": 0.5, "Y": 0.0}}
  assert suite_scores.SCORES["mmbench"] is suite_scores.circular


@pytest.mark.parametrize("suite, options, prediction", [
    ("pope", (), "unknown"), ("mme", (), "UNKNOWN"), ("seed_bench", ("a", "b"), "unknown"),
    ("mmbench", ("a", "b", "c"), "Unknown")])
def test_an_unknown_answer_is_wrong_never_an_error(suite, options, prediction):
  question = q("A" if options else "yes", suite=suite, options=options, group=suite,
               split="random" if suite == "pope" else "perception")
  scores = suite_scores.SCORES[suite]([question], [prediction])
  headline = next(iter(suite_scores.reported(suite, scores).values()))
  assert headline == 0.0


def test_predictions_must_be_answers():
  with pytest.raises(ValueError, match=r"^f:1: prediction 'maybe' for question ; expected one "
                                       r"of \['yes', 'no', 'unknown'\]$"):
    suite_scores.pope([q("yes")], ["maybe"])
  with pytest.raises(ValueError, match=r"prediction 'E'"):
    suite_scores.multiple_choice([q("A", suite="seed_bench", options=("a", "b", "c", "d"))], ["E"])
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


@settings(max_examples=80, deadline=None)
@given(questions=st.lists(st.tuples(st.integers(2, 4), st.lists(st.booleans(), min_size=4,
                                                                max_size=4)),
                          min_size=1, max_size=12))
def test_circular_accuracy_properties(questions):
  """Circular accuracy is the share of questions with every rotation right, never
  above the unrotated copies' accuracy."""
  qs, preds = [], []
  for k, (n, right) in enumerate(questions):
    for r in range(n):
      qs.append(q("A", image_id=str(k), suite="mmbench", options=("o",) * n))
      preds.append("A" if right[r] else "B")
  got = suite_scores.circular(qs, preds)
  solved = [all(right[:n]) for n, right in questions]
  assert got["accuracy"] == pytest.approx(sum(solved) / len(questions))
  assert got["accuracy"] <= got["first_pass"] + 1e-12
  assert got["questions"] == len(questions) and got["asked"] == len(qs)


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
