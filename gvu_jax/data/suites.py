"""Understanding benchmarks as TFDS builders over files the user puts in a
manual_dir (nothing is ever downloaded); their metrics are in
evaluation/suite_scores.py.

  pope        POPE (Li et al. 2023), object hallucination: splits random, popular,
              adversarial; yes/no questions about COCO val2014 images
  mme         MME (Fu et al. 2023): splits perception (10 subtasks) and cognition
              (4); yes/no questions, two per image
  seed_bench  SEED-Bench (Li et al. 2023), its image questions: split test;
              multiple choice, options A-D

What each expects in manual_dir:

  pope        coco_pope_random.json, coco_pope_popular.json,
              coco_pope_adversarial.json (the POPE repo's output/coco/: one JSON
              object a line, {"question_id", "image", "text", "label"}) and
              val2014/<image> (COCO's val2014 images)
  mme         MME_Benchmark_release_version/<subtask>/ for every subtask (or
              MME_Benchmark_release_version/MME_Benchmark/<subtask>/, as common
              downloads unpack): image files beside <image stem>.txt, or images/
              and questions_answers_YN/; each .txt holds lines "question<TAB>Yes"
              or "question<TAB>No" (trailing white space, a tab too, is ignored,
              as LLaVA's reader strips it)
  seed_bench  SEED-Bench.json ({"question_type": {name: id}, "questions": [...]})
              and SEED-Bench-image/<data_id>

Images are not copied into the prepared dataset (COCO val2014 alone is 6 GB): a
record holds the absolute path of its image, checked when the dataset is
prepared and again when `questions` reads it back. Records keep the source's
order (MME: subtasks in the order below, question files by name, lines in order).
Every problem with the files is one InputError naming the file and line (or
`questions[i]` in SEED-Bench's single JSON document), what was expected and
what was found.
"""

import contextlib
import io
import json
import os
from typing import NamedTuple

import tensorflow_datasets as tfds

from gvu_jax.data import prompt_files
from gvu_jax.infra import hosts
from gvu_jax.infra.errors import InputError

POPE_SPLITS = ("random", "popular", "adversarial")
MME_ROOT = "MME_Benchmark_release_version"
MME_INNER = "MME_Benchmark"   # the extra level some downloads have under MME_ROOT
MME_SUBTASKS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity",
                   "scene", "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation",
                  "code_reasoning")}
MME_IMAGE_EXTENSIONS = (".jpg", ".png")
SEED_FILE = "SEED-Bench.json"
SEED_IMAGES = "SEED-Bench-image"
LETTERS = "ABCD"
YES_NO = ("yes", "no")

class Question(NamedTuple):
  """One benchmark question; yes/no when `options` is empty, else multiple choice
  with `answer` the letter of the right option."""
  suite: str       # "pope" | "mme" | "seed_bench"
  split: str       # POPE: random/popular/adversarial; MME: perception/cognition; SEED: test
  id: str          # unique within the suite
  image: str       # absolute path of the image file
  question: str    # the question text exactly as the source gives it
  options: tuple   # multiple choice: the option texts in order (A, B, C, D); yes/no: ()
  answer: str      # yes/no: "yes" or "no"; multiple choice: "A".."D"
  group: str       # POPE: the split; MME: the subtask; SEED: the question type's name
  image_id: str    # the image the question is about (MME: "<subtask>/<image file name>")
  source: str      # "file:line" (SEED: "file: questions[i]") of the record


# --- readers (plain Python) --------------------------------------------------


def _read_text(path, what):
  """The UTF-8 text of `path`; a missing file names the path and what it holds."""
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file; expected {what}")
  with open(path, "rb") as f:
    return prompt_files.decode(path, f.read())


def _folder(path, what):
  if not os.path.isdir(path):
    raise InputError(f"{path}: no such folder; expected {what}")
  return path


_MAY_BE_EMPTY = {f"choice_{c}" for c in "abcd"}   # an option's text may be ""


def _field(where, fields, key, types=(str,)):
  """fields[key], which must be there and a string (an id may be an integer too);
  a string must not be empty, except an option's text."""
  if key not in fields:
    raise InputError(f"{where}: no {key!r} field (fields: {sorted(fields)})")
  value = fields[key]
  if not isinstance(value, types) or isinstance(value, bool):
    expected = "a string" if types == (str,) else "a string or an integer"
    raise InputError(f"{where}: {key!r} is a JSON {prompt_files.json_type(value)}, "
                     f"expected {expected}")
  if isinstance(value, str) and not value.strip() and key not in _MAY_BE_EMPTY:
    raise InputError(f"{where}: empty {key!r}")
  return value


def _image(where, folder, name):
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise InputError(f"{where}: no image {path}")
  return path


def _unique(seen, ident, where, at):
  """Records where question_id `ident` was first seen; a second time is an error."""
  if ident in seen:
    raise InputError(f"{where}: duplicate question_id {ident!r} (first {seen[ident]})")
  seen[ident] = at


def read_pope(manual_dir):
  """POPE's three COCO files -> [Question], split by split in file order."""
  manual_dir = os.path.abspath(manual_dir)
  images = os.path.join(manual_dir, "val2014")
  files = [os.path.join(manual_dir, f"coco_pope_{split}.json") for split in POPE_SPLITS]
  texts = [_read_text(path, "POPE's file from github.com/AoiDragon/POPE (output/coco/), "
                      "one JSON object a line") for path in files]
  _folder(images, "COCO's val2014 images, which POPE's questions are about")
  out = []
  for split, path, text in zip(POPE_SPLITS, files, texts):
    seen, first = {}, len(out)
    for line, fields in prompt_files.jsonl_objects(path, text):
      where = f"{path}:{line}"
      qid = str(_field(where, fields, "question_id", (str, int)))
      image, text = _field(where, fields, "image"), _field(where, fields, "text")
      label = _field(where, fields, "label")
      if label.strip().lower() not in YES_NO:
        raise InputError(f"{where}: label must be 'yes' or 'no', got {label!r}")
      _unique(seen, qid, where, f"on line {line}")
      out.append(Question("pope", split, f"{split}/{qid}", _image(where, images, image), text,
                          (), label.strip().lower(), split, image, where))
    if len(out) == first:
      raise InputError(f"{path}: the file holds no questions")
  return out


def _mme_folders(root, subtask):
  """(question folder, image folder) of a subtask: images/ and
  questions_answers_YN/ when it has them, else the subtask folder for both."""
  folder = os.path.join(root, subtask)
  _folder(folder, f"MME's {subtask} subtask (MME is scored over all "
          f"{sum(map(len, MME_SUBTASKS.values()))} subtasks)")
  qa, images = os.path.join(folder, "questions_answers_YN"), os.path.join(folder, "images")
  if os.path.isdir(qa) or os.path.isdir(images):
    _folder(qa, "the question files beside images/")
    _folder(images, "the images beside questions_answers_YN/")
    return qa, images
  return folder, folder


def _mme_questions(path, split, subtask, image_dir):
  stem = os.path.splitext(os.path.basename(path))[0]
  names = [stem + ext for ext in MME_IMAGE_EXTENSIONS
           if os.path.isfile(os.path.join(image_dir, stem + ext))]
  if not names:
    raise InputError(f"{path}: no image {' or '.join(stem + e for e in MME_IMAGE_EXTENSIONS)} "
                     f"in {image_dir}")
  image = os.path.join(image_dir, names[0])
  image_id = f"{subtask}/{names[0]}"
  out = []
  for line, content in prompt_files.lines(_read_text(path, "")):
    if not content.strip():
      continue
    where = f"{path}:{line}"
    parts = content.rstrip().split("\t")
    if len(parts) != 2:
      got = "no tab" if len(parts) == 1 else f"{len(parts)} tab-separated fields"
      raise InputError(f"{where}: expected 'question<TAB>Yes' or 'question<TAB>No', got {got}")
    question, answer = parts
    if answer.strip().lower() not in YES_NO:
      raise InputError(f"{where}: the answer must be 'Yes' or 'No', got {answer!r}")
    if not question.strip():
      raise InputError(f"{where}: empty question")
    out.append(Question("mme", split, f"{image_id}/{len(out)}", image, question, (),
                        answer.strip().lower(), subtask, image_id, where))
  if not out:
    raise InputError(f"{path}: the file holds no questions")
  return out


def read_mme(manual_dir):
  """Every MME subtask -> [Question]: perception then cognition, each subtask's
  question files in name order."""
  root = _folder(os.path.join(os.path.abspath(manual_dir), MME_ROOT),
                 "MME's release folder, one folder per subtask")
  inner = os.path.join(root, MME_INNER)
  if os.path.isdir(inner) and not os.path.isdir(os.path.join(root, MME_SUBTASKS["perception"][0])):
    root = inner   # <release>/MME_Benchmark/<subtask>/
  folders = {s: _mme_folders(root, s) for split in MME_SUBTASKS for s in MME_SUBTASKS[split]}
  out = []
  for split, subtasks in MME_SUBTASKS.items():
    for subtask in subtasks:
      qa, images = folders[subtask]
      files = sorted(f for f in os.listdir(qa) if f.endswith(".txt"))
      if not files:
        raise InputError(f"{qa}: no question files (.txt); expected 'question<TAB>Yes|No' "
                         "files named as their images")
      for f in files:
        out.extend(_mme_questions(os.path.join(qa, f), split, subtask, images))
  return out


def read_seed_bench(manual_dir):
  """SEED-Bench's image questions -> [Question], in the file's order."""
  manual_dir = os.path.abspath(manual_dir)
  path = os.path.join(manual_dir, SEED_FILE)
  text = _read_text(path, "SEED-Bench's question file (huggingface.co/datasets/"
                    "AILab-CVC/SEED-Bench)")
  images = _folder(os.path.join(manual_dir, SEED_IMAGES), "SEED-Bench's images")
  document = prompt_files.json_object(path, text)
  json_type = prompt_files.json_type
  for key, kind in (("question_type", dict), ("questions", list)):
    if not isinstance(document.get(key), kind):
      raise InputError(f"{path}: {key!r} must be a JSON {json_type(kind())}, got "
                       f"{'nothing' if key not in document else json_type(document[key])}")
  types = {v: k for k, v in document["question_type"].items()}
  out, seen = [], {}
  for i, fields in enumerate(document["questions"]):
    where = f"{path}: questions[{i}]"
    if not isinstance(fields, dict):
      raise InputError(f"{where}: expected a JSON object, got {json_type(fields)}")
    if _field(where, fields, "data_type") != "image":
      continue
    qid = str(_field(where, fields, "question_id", (str, int)))
    question = _field(where, fields, "question")
    options = tuple(_field(where, fields, f"choice_{c}") for c in LETTERS.lower())
    answer = _field(where, fields, "answer")
    if answer.strip().upper() not in LETTERS:
      raise InputError(f"{where}: answer must be one of "
                       f"{', '.join(repr(c) for c in LETTERS)}, got {answer!r}")
    type_id = fields.get("question_type_id")
    if isinstance(type_id, bool) or type_id not in types:
      raise InputError(f"{where}: question_type_id {type_id!r} is not one of question_type's "
                       f"ids {sorted(types)}")
    data_id = _field(where, fields, "data_id")
    _unique(seen, qid, where, f"at questions[{i}]")
    out.append(Question("seed_bench", "test", qid, _image(where, images, data_id), question,
                        options, answer.strip().upper(), types[type_id], data_id, where))
  if not out:
    raise InputError(f"{path}: no image questions (data_type 'image')")
  return out


# --- TFDS builders -----------------------------------------------------------


def _features():
  return tfds.features.FeaturesDict({k: tfds.features.Text() for k in Question._fields})


def _record(q):
  return {**q._asdict(), "options": json.dumps(list(q.options))}


def _question(record):
  """A record read back from a data source (bytes values) -> Question."""
  text = {k: v.decode("utf-8") if isinstance(v, bytes) else str(v) for k, v in record.items()}
  return Question(**{**text, "options": tuple(json.loads(text["options"]))})


class _SuiteBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What every suite builder shares: Question records in the reader's order,
  read from manual_dir and never downloaded. Not in TFDS's registry (SUITES names
  them), so importing this module twice, as a notebook may, is harmless."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SPLITS = ()
  HOMEPAGE = ""
  LAYOUT = ""

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self):  # noqa: N802 (TFDS's name)
    return f"Put these in manual_dir: {self.LAYOUT}"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").strip(),
                                 homepage=self.HOMEPAGE, features=_features(),
                                 disable_shuffling=True)   # records keep the source's order

  def read(self, manual_dir):
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:   # a missing or empty folder: the reader names what it lacks
      manual_dir = getattr(dl_manager, "_manual_dir", None)
      if manual_dir is None:
        raise InputError(f"{self.name}: no manual_dir; put these in one: {self.LAYOUT}") from None
    by_split = {s: [] for s in self.SPLITS}
    for q in self.read(os.fspath(manual_dir)):
      by_split[q.split].append(q)
    return {s: self._generate_examples(qs) for s, qs in by_split.items()}

  def _generate_examples(self, qs):
    for i, q in enumerate(qs):
      yield i, _record(q)


class Pope(_SuiteBuilder, skip_registration=True):
  """POPE (Li et al. 2023): yes/no questions on whether an object is in a COCO
  val2014 image; random, popular and adversarial negative sampling."""
  SPLITS = POPE_SPLITS
  HOMEPAGE = "https://github.com/AoiDragon/POPE"
  LAYOUT = ("coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json "
            "(github.com/AoiDragon/POPE, output/coco/) and val2014/ (COCO val2014 images)")

  def read(self, manual_dir):
    return read_pope(manual_dir)


class Mme(_SuiteBuilder, skip_registration=True):
  """MME (Fu et al. 2023): yes/no questions, two per image, over 10 perception
  and 4 cognition subtasks."""
  SPLITS = tuple(MME_SUBTASKS)
  HOMEPAGE = "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"
  LAYOUT = (f"{MME_ROOT}/ (MME's release) with a folder per subtask: "
            + ", ".join(s for ss in MME_SUBTASKS.values() for s in ss))

  def read(self, manual_dir):
    return read_mme(manual_dir)


class SeedBench(_SuiteBuilder, skip_registration=True):
  """SEED-Bench (Li et al. 2023), its image questions: multiple choice, four
  options, nine question types."""
  SPLITS = ("test",)
  HOMEPAGE = "https://github.com/AILab-CVC/SEED-Bench"
  LAYOUT = f"{SEED_FILE} and {SEED_IMAGES}/ (huggingface.co/datasets/AILab-CVC/SEED-Bench)"

  def read(self, manual_dir):
    return read_seed_bench(manual_dir)


SUITES = {"pope": Pope, "mme": Mme, "seed_bench": SeedBench}


def builder(name, data_dir=None):
  if name not in SUITES:
    raise InputError(f"unknown benchmark {name!r}; expected one of {sorted(SUITES)}")
  return SUITES[name](data_dir=data_dir)


def prepare_once(b, manual_dir, allow_download=False):
  """TFDS builder `b` prepared (array_record files) unless it is. On several hosts
  host 0 prepares first, so a shared data_dir is written once; then the others
  (nothing to do where they share its data_dir)."""
  def make():
    if not b.is_prepared():
      b.allow_download = allow_download
      tfds.disable_progress_bar()
      with contextlib.redirect_stdout(io.StringIO()):   # TFDS prints its stages
        b.download_and_prepare(file_format="array_record", download_config=(
            tfds.download.DownloadConfig(manual_dir=manual_dir)))

  hosts.agreed(f"prepare {b.name}", make)
  make()


def questions(name, data_dir=None, manual_dir=None):
  """Every question of suite `name`, split by split in source order; the suite
  is prepared into data_dir (TFDS's default when None) from manual_dir once."""
  b = builder(name, data_dir)
  prepare_once(b, manual_dir)
  out, present = [], {}
  for split in b.SPLITS:
    source = b.as_data_source(split)
    for i in range(len(source)):
      q = _question(source[i])
      if q.image not in present:
        present[q.image] = os.path.isfile(q.image)
      if not present[q.image]:
        raise InputError(f"{q.source}: image {q.image} no longer exists (it did when {name} "
                         f"was prepared in {b.data_dir}); put it back or prepare {name} again")
      out.append(q)
  return out
