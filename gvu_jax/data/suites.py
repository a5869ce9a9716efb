"""Understanding benchmarks as TFDS builders over files the user puts in a
manual_dir (nothing is ever downloaded); their metrics are in
evaluation/suite_scores.py.

  pope        POPE (Li et al. 2023), object hallucination: splits random, popular,
              adversarial; yes/no questions about COCO val2014 images
  mme         MME (Fu et al. 2023): splits perception (10 subtasks) and cognition
              (4); yes/no questions, two per image
  seed_bench  SEED-Bench (Li et al. 2023), its image questions: split test;
              multiple choice, options A-D
  gqa         GQA (Hudson and Manning 2019), testdev-balanced: split testdev; open
              questions answered with a word or a short phrase
  mmbench     MMBench (Liu et al. 2023), the English dev split: split dev;
              multiple choice, 2 to 4 options, each question asked once per
              circular shift of its options (MMBench's CircularEval)

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
  gqa         testdev_balanced_questions.json (GQA's questions1.2: one JSON object,
              {question_id: {"imageId", "question", "answer", "types":
              {"structural", ...}, ...}}) and images/<imageId>.jpg (GQA's images)
  mmbench     MMBench_DEV_EN.tsv (VLMEvalKit's), or mmbench_dev_en_20231003.tsv or
              mmbench_dev_20230712.tsv (MMBench's releases): a header row, then a
              question a row with the
              columns index, question, hint, A, B, C, D (an empty or "nan" cell: no
              such option), answer, category and image (the image file's bytes in
              base64); rows with index >= 1e6 (VLMEvalKit's circular copies of
              the question index % 1e6) are skipped, as the copies are made here

Images are not copied into the prepared dataset (COCO val2014 alone is 6 GB): a
record holds the absolute path of its image, checked when the dataset is
prepared and again when `questions` reads it back. MMBench's images are in its
TSV, so preparing it decodes each into <data_dir>/mmbench_images/<index>.<ext>
(data_dir: the root of TFDS's datasets, beside mmbench/<version>/; the extension
from the image's own format), where its records point: never into manual_dir,
and not into the versioned folder, which TFDS writes under another name and
renames. A file already there is kept if it holds the same bytes and never
overwritten if it does not.

Records keep the source's order (MME: subtasks in the order below, question
files by name, lines in order; MMBench: each question followed by its shifts).
Every problem with the files is one InputError naming the file and line (or
`questions[i]` in SEED-Bench's single JSON document, the question id in GQA's),
what was expected and what was found.
"""

import base64
import binascii
import contextlib
import csv
import io
import json
import os
import re
from typing import NamedTuple

import PIL.Image
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
GQA_FILE = "testdev_balanced_questions.json"
GQA_IMAGES = "images"
# the first there is read: VLMEvalKit's, then the MMBench releases' (newest first)
MMBENCH_FILES = ("MMBench_DEV_EN.tsv", "mmbench_dev_en_20231003.tsv", "mmbench_dev_20230712.tsv")
MMBENCH_IMAGES = "mmbench_images"   # under TFDS's data_dir: MMBench's decoded images
MMBENCH_COLUMNS = ("index", "question", "A", "B", "answer", "category", "image")  # required
MMBENCH_COPY = 10 ** 6   # VLMEvalKit's circular copy r of question i has index i + r * 1e6
IMAGE_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp",
                    "WEBP": "webp", "TIFF": "tif"}   # PIL's format -> a decoded image's extension
LETTERS = "ABCD"
YES_NO = ("yes", "no")

class Question(NamedTuple):
  """One benchmark question. `options` empty: a yes/no question (POPE, MME), or
  an open one answered with a word or short phrase (GQA; `answer` is then the
  reference answer text as GQA gives it); else multiple choice with `answer` the
  letter of the right option. KINDS says which each suite's are."""
  suite: str       # "pope" | "mme" | "seed_bench" | "gqa" | "mmbench"
  split: str       # POPE: random/popular/adversarial; MME: perception/cognition; SEED: test;
                   # GQA: testdev; MMBench: dev
  id: str          # unique within the suite (MMBench: "<index>/<shift>")
  image: str       # absolute path of the image file
  question: str    # the question text exactly as the source gives it
  options: tuple   # multiple choice: the option texts in order (A, B, ...); yes/no, open: ()
  answer: str      # yes/no: "yes" or "no"; open: the reference answer; multiple choice: a letter
  group: str       # POPE: the split; MME: the subtask; SEED: the question type's name;
                   # GQA: the structural type (query, verify, logical, choose, compare);
                   # MMBench: the category
  image_id: str    # the image the question is about (MME: "<subtask>/<image file name>";
                   # MMBench: the question's index, which its shifted copies share)
  source: str      # "file:line" (SEED: "file: questions[i]"; GQA: "file: 'question id'")
  hint: str = ""   # MMBench's hint, a context given with the question; "" elsewhere


# how each suite's questions are answered: "yes_no", "choice" (a letter) or "open" (text)
KINDS = {"pope": "yes_no", "mme": "yes_no", "seed_bench": "choice", "gqa": "open",
         "mmbench": "choice"}


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


def _file_and_images(manual_dir, name, what, images, images_what):
  """(path, text) of the question file `name` in manual_dir and the path of its
  images folder, each checked to be there (`what` each holds, for the error)."""
  manual_dir = os.path.abspath(manual_dir)
  path = os.path.join(manual_dir, name)
  text = _read_text(path, what)
  return path, text, _folder(os.path.join(manual_dir, images), images_what)


def read_seed_bench(manual_dir):
  """SEED-Bench's image questions -> [Question], in the file's order."""
  path, text, images = _file_and_images(
      manual_dir, SEED_FILE, "SEED-Bench's question file (huggingface.co/datasets/"
      "AILab-CVC/SEED-Bench)", SEED_IMAGES, "SEED-Bench's images")
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


def read_gqa(manual_dir):
  """GQA's testdev-balanced questions -> [Question], in the file's order."""
  path, text, images = _file_and_images(
      manual_dir, GQA_FILE, "GQA's testdev-balanced questions (cs.stanford.edu/people/"
      "dorarad/gqa/, questions1.2.zip)", GQA_IMAGES, "GQA's images, <imageId>.jpg")
  if not text.strip():
    raise InputError(f"{path}: the file holds no questions")
  json_type = prompt_files.json_type
  out = []
  for qid, fields in prompt_files.json_object(path, text).items():
    where = f"{path}: {qid!r}"
    if not isinstance(fields, dict):
      raise InputError(f"{where}: expected a JSON object, got {json_type(fields)}")
    image_id = _field(where, fields, "imageId")
    question, answer = _field(where, fields, "question"), _field(where, fields, "answer")
    types = fields.get("types")
    if not isinstance(types, dict):
      raise InputError(f"{where}: 'types' must be a JSON object, got "
                       f"{'nothing' if 'types' not in fields else json_type(types)}")
    group = _field(f"{where}: types", types, "structural")
    out.append(Question("gqa", "testdev", qid, _image(where, images, f"{image_id}.jpg"),
                        question, (), answer, group, image_id, where))
  if not out:
    raise InputError(f"{path}: the file holds no questions")
  return out


def _absent(cell):
  """An empty MMBench cell: "" or "nan" (how pandas writes a missing value)."""
  return cell is None or not cell.strip() or cell.strip().lower() == "nan"


def _tsv_rows(path):
  """(line, fields) of each non-blank row of the TSV `path` after its header,
  streamed (MMBench's is hundreds of MB); fields maps column -> cell.
  Quoting is as pandas writes and reads a TSV, as VLMEvalKit does."""
  limit = csv.field_size_limit()
  csv.field_size_limit(2 ** 31 - 1)   # a cell holds a whole image in base64
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f, delimiter="\t")
      header = next(reader, None)
      if not header:
        raise InputError(f"{path}: the file is empty; expected a header row naming the "
                         f"columns {', '.join(MMBENCH_COLUMNS)}")
      for column in MMBENCH_COLUMNS:
        if column not in header:
          raise InputError(f"{path}:1: the header has no {column!r} column (columns: {header})")
      line = reader.line_num
      for row in reader:
        start, line = line + 1, reader.line_num
        if not any(cell.strip() for cell in row):
          continue
        if len(row) != len(header):
          raise InputError(f"{path}:{start}: {len(row)} tab-separated fields, expected the "
                           f"header's {len(header)}")
        yield start, dict(zip(header, row))
  except UnicodeDecodeError:
    with open(path, "rb") as f:
      prompt_files.decode(path, f.read())   # names the line and column
    raise
  except csv.Error as e:
    raise InputError(f"{path}:{reader.line_num}: not a TSV row ({e})") from None
  finally:
    csv.field_size_limit(limit)


def _decoded_image(where, cell, image_dir, name):
  """The image in base64 `cell`, written once to image_dir/<name>.<ext> (ext from
  its format) -> that path."""
  bad = re.search(r"[^A-Za-z0-9+/=]", cell)
  if bad:
    raise InputError(f"{where}: 'image' is not base64 (character {bad.group()!r} at position "
                     f"{bad.start()})")
  try:
    raw = base64.b64decode(cell, validate=True)
  except binascii.Error as e:
    raise InputError(f"{where}: 'image' is not base64 ({e})") from None
  kind = None
  try:
    with PIL.Image.open(io.BytesIO(raw)) as image:
      kind = image.format
      image.load()
  except Exception as e:   # noqa: BLE001 (whatever PIL raises for bytes it cannot read)
    if kind is None:
      raise InputError(f"{where}: 'image' is {len(raw)} bytes in base64 that are no image "
                       f"file PIL reads (they begin {raw[:8]!r})") from None
    reason = " ".join(str(e).split())
    raise InputError(f"{where}: 'image' is a {kind} image that does not decode ({reason})") \
        from None
  path = os.path.join(image_dir, f"{name}.{IMAGE_EXTENSIONS.get(kind, kind.lower())}")
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() == raw:
        return path   # decoded before (by an earlier preparation)
    raise InputError(f"{where}: {path} exists and holds another image than this row's; "
                     "remove it (or prepare into another data_dir) and prepare again")
  os.makedirs(image_dir, exist_ok=True)
  tmp = os.path.join(image_dir, f".{name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(raw)
    os.replace(tmp, path)   # whole or not at all
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _mmbench_index(where, fields):
  cell = fields["index"].strip()
  if not re.fullmatch(r"[0-9]+", cell):
    raise InputError(f"{where}: 'index' must be a non-negative integer, got "
                     f"{fields['index']!r}")
  return int(cell)


def _mmbench_row(where, fields):
  """(question, options, answer, category, hint) of an MMBench row."""
  question = _field(where, fields, "question")
  present = [c for c in LETTERS if not _absent(fields.get(c))]
  n = len(present)
  if present != list(LETTERS[:n]):
    gap = next(c for c in LETTERS if c not in present)
    raise InputError(f"{where}: option {gap} is empty but {present[-1]} is not; expected "
                     "the options in A, B, C, D with none left out")
  if n < 2:
    raise InputError(f"{where}: {n} option{'s' * (n != 1)}; expected 2 to 4 (columns A to D)")
  answer = fields["answer"].strip()
  if answer not in present:
    raise InputError(f"{where}: answer must be one of {', '.join(repr(c) for c in present)} "
                     f"(the row's options), got {fields['answer']!r}")
  hint = fields.get("hint", "")
  return (question, tuple(fields[c] for c in present), answer,
          _field(where, fields, "category"), "" if _absent(hint) else hint)


def read_mmbench(manual_dir, image_dir):
  """MMBench's English dev split -> [Question]: each question followed by its
  circular shifts. Its images are decoded into image_dir (not manual_dir).

  Circular evaluation as MMBench and VLMEvalKit do it: a question with n options
  is asked n times, shift r = 0..n-1 putting original option (i + r) % n at
  place i (the answer's letter moving with its option); it counts as answered
  only if every shift is. VLMEvalKit's TSV already holds shifts r >= 1 as rows
  with index + r * 1e6; those rows are skipped and every shift made here."""
  manual_dir, image_dir = os.path.abspath(manual_dir), os.path.abspath(image_dir)
  paths = [os.path.join(manual_dir, name) for name in MMBENCH_FILES]
  path = next((p for p in paths if os.path.isfile(p)), None)
  if path is None:
    raise InputError(f"{manual_dir}: none of {MMBENCH_FILES[0]} (VLMEvalKit's), "
                     f"{MMBENCH_FILES[1]} or {MMBENCH_FILES[2]} (github.com/open-compass/"
                     "MMBench) is there; expected MMBench's English dev split, a TSV with the "
                     "images in base64")
  rows, seen, images = [], {}, {}
  for line, fields in _tsv_rows(path):
    where = f"{path}:{line}"
    index = _mmbench_index(where, fields)
    if index >= MMBENCH_COPY:
      continue   # VLMEvalKit's shifted copy of question index % 1e6
    if index in seen:
      raise InputError(f"{where}: duplicate index {index} (first on line {seen[index]})")
    seen[index] = line
    question = _mmbench_row(where, fields)
    cell = _field(where, fields, "image").strip()
    if re.fullmatch(r"[0-9]+", cell) and len(cell) <= 64:
      image = int(cell)   # as VLMEvalKit reads it: the image of the question with this index
    else:
      image = images[index] = _decoded_image(where, cell, image_dir, index)
    rows.append((where, index, image, question))
  out = []
  for where, index, image, (question, options, answer, category, hint) in rows:
    if isinstance(image, int):
      if image not in images:
        raise InputError(f"{where}: 'image' is {image}, which names no question of the file "
                         "with an image of its own; expected an image in base64 or such an "
                         "index")
      image = images[image]
    n, a = len(options), LETTERS.index(answer)
    for r in range(n):
      out.append(Question("mmbench", "dev", f"{index}/{r}", image, question,
                          options[r:] + options[:r], LETTERS[(a - r) % n], category,
                          str(index), where, hint))
  if not out:
    raise InputError(f"{path}: the file holds no questions")
  return out


# --- TFDS builders -----------------------------------------------------------


def _features():
  return tfds.features.FeaturesDict({k: tfds.features.Text() for k in Question._fields})


def _record(q):
  return {**q._asdict(), "options": json.dumps(list(q.options))}


def _question(record):
  """A record read back from a data source (bytes values) -> Question; one
  without a field added since (hint) gets its default."""
  text = {k: v.decode("utf-8") if isinstance(v, bytes) else str(v) for k, v in record.items()}
  return Question(**{**text, "options": tuple(json.loads(text["options"]))})


class _SuiteBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What every suite builder shares: Question records in the reader's order,
  read from manual_dir and never downloaded. Not in TFDS's registry (SUITES names
  them), so importing this module twice, as a notebook may, is harmless."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Question.hint (MMBench's hint; empty elsewhere): the records have another "
               "field, so a dataset prepared by 1.0.0 is prepared again, not misread. GQA "
               "and MMBench start here."}
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


class Gqa(_SuiteBuilder, skip_registration=True):
  """GQA (Hudson and Manning 2019), testdev-balanced: compositional questions on
  scene-graph images, each answered with a word or a short phrase."""
  name = "gqa"
  SPLITS = ("testdev",)
  HOMEPAGE = "https://cs.stanford.edu/people/dorarad/gqa/"
  LAYOUT = (f"{GQA_FILE} (GQA's questions1.2.zip) and {GQA_IMAGES}/ (GQA's images.zip: "
            "<imageId>.jpg)")

  def read(self, manual_dir):
    return read_gqa(manual_dir)


class MmBench(_SuiteBuilder, skip_registration=True):
  """MMBench (Liu et al. 2023), the English dev split: multiple choice, 2 to 4
  options, 20 ability categories; each question asked once per circular shift of
  its options (CircularEval)."""
  name = "mmbench"
  SPLITS = ("dev",)
  HOMEPAGE = "https://github.com/open-compass/MMBench"
  LAYOUT = (f"{MMBENCH_FILES[0]} (VLMEvalKit's) or {MMBENCH_FILES[1]} "
            "(github.com/open-compass/MMBench): the dev split in English, images in base64")

  @property
  def image_dir(self):
    """Where the TSV's images are decoded: beside the prepared datasets, where
    they stay after TFDS renames its temporary folder, never in manual_dir."""
    return os.path.join(os.fspath(self.data_dir_root), MMBENCH_IMAGES)

  def read(self, manual_dir):
    return read_mmbench(manual_dir, self.image_dir)


SUITES = {"pope": Pope, "mme": Mme, "seed_bench": SeedBench, "gqa": Gqa, "mmbench": MmBench}


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
