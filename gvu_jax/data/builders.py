"""Prompt datasets as TFDS builders (array_record files, read back through
`tfds.data_source` and grain; TensorFlow is never needed).

  gvu_world        the embedded world's prompts; splits pretrain / gvu / heldout
  geneval_prompts  GenEval-style prompts: train (made by data/geneval.py, none of
                   them a test prompt), test (GenEval's 553 evaluation prompts)
  geneval_plus     GenEval++ (Echo-4o; what the GvU paper reports): 280 prompts, 7 tags
  t2i_compbench    T2I-CompBench: <category>_train / <category>_val for color,
                   shape, texture, spatial, non_spatial, complex
  dpg_bench        DPG-Bench (ELLA): 1065 dense prompts
  prompt_file      a user's own .txt / .jsonl / .csv file (data/prompt_files.py)

and the understanding benchmarks of data/suites.py, whose records are questions
(prepared from manual_dir only; not prompt sets):

  pope             POPE: random / popular / adversarial yes/no questions on COCO
  mme              MME: perception / cognition yes/no questions
  seed_bench       SEED-Bench's image questions (multiple choice): test
  gqa              GQA's testdev-balanced questions (open short answers): testdev
  mmbench          MMBench's English dev questions (multiple choice, each asked once
                   per rotation of its options): dev

Every record: prompt, id, tag, index (its place in the source file) and meta (a
JSON object: whatever else the source said, e.g. GenEval's `include`). Records
keep the source's order.

Builders with public source files take each from `manual_dir/<file name>` when
it is there, and otherwise download it from SOURCES, which only the command
below does; gvu_jax.main never downloads:

  python -m gvu_jax.data.builders --name=geneval_plus [--manual_dir=DIR] [--data_dir=DIR]

`data.prompts` / `eval.prompts` name a builder as NAME or NAME:SPLIT
("t2i_compbench:color_val", "geneval_prompts:test", "a+b" joins splits).
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging

from gvu_jax import world
from gvu_jax.data import geneval, prompt_files, suites
from gvu_jax.infra.errors import InputError

_GITHUB = "https://raw.githubusercontent.com"
T2I_COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")


def _features():
  return tfds.features.FeaturesDict({
      "prompt": tfds.features.Text(), "id": tfds.features.Text(),
      "tag": tfds.features.Text(), "index": tfds.features.Scalar(dtype=np.int64),
      "meta": tfds.features.Text()})


def _record(index, prompt, tag=prompt_files.UNTAGGED, id="", **meta):
  return {"prompt": prompt, "id": id or str(index), "tag": tag, "index": index,
          "meta": json.dumps(meta, sort_keys=True)}


def _file_records(path):
  """A prompt file (data/prompt_files.py; GenEval's metadata lines among them:
  tag, include, exclude, prompt) -> records."""
  for i, p in enumerate(prompt_files.read(path)):
    yield _record(i, p.text, p.category, p.id, **{k: json.loads(v) for k, v in p.meta})


class _PromptBuilder(tfds.core.GeneratorBasedBuilder):
  """What every prompt builder shares: the features, the record order, and
  where a source file comes from."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SOURCES = {}          # file name -> public URL
  DEFAULT_SPLIT = "test"
  HOMEPAGE = ""
  allow_download = False   # set by prepare(); main never downloads

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self):  # noqa: N802 (TFDS's name)
    return ("Put these files in manual_dir (or let `python -m gvu_jax.data.builders "
            f"--name={self.name}` download them): "
            + ", ".join(f"{f} from {u}" for f, u in self.SOURCES.items()))

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").strip(),
                                 homepage=self.HOMEPAGE, features=_features(),
                                 disable_shuffling=True)   # records keep the file's order

  def _source(self, dl_manager, name):
    """manual_dir/<name> if the user put it there, else a download of SOURCES[name]."""
    try:
      local = os.path.join(dl_manager.manual_dir, name)
    except (AssertionError, ValueError):   # no manual_dir given, or it is empty
      local = None
    if local and os.path.isfile(local):
      return local
    if not self.allow_download:
      raise InputError(f"{self.name}: {name} is not in manual_dir "
                       f"({local or 'none given'}); put it there (from {self.SOURCES[name]}) "
                       f"or run python -m gvu_jax.data.builders --name={self.name}")
    return fetch(self.SOURCES[name], os.path.join(os.fspath(dl_manager.download_dir), name),
                 f"{self.name}: {name}")


DOWNLOAD_TIMEOUT_S = 20


def fetch(url, path, what):
  """Downloads `url` to `path` in one attempt (written aside, then renamed), or one
  error within DOWNLOAD_TIMEOUT_S naming the file, its URL and --manual_dir. (TFDS's
  own download manager retries for minutes when there is no network.)"""
  if os.path.isfile(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
        open(path + ".part", "wb") as f:
      shutil.copyfileobj(response, f)
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise InputError(f"{what}: cannot download {url} ({reason}); put the file in a folder "
                     "and pass it as --manual_dir=DIR") from None
  os.replace(path + ".part", path)
  return path


class GvuWorld(_PromptBuilder):
  """The embedded world's prompts (gvu_jax/world/), split as configs/synthetic.py
  splits them by default (split_seed 0, 20% held out, 30% GvU-only)."""
  DEFAULT_SPLIT = "gvu"

  def _split_generators(self, dl_manager):
    splits = world.split_specs(0, 0.2, 0.3)
    return {name: self._generate_examples(getattr(splits, name))
            for name in ("pretrain", "gvu", "heldout")}

  def _generate_examples(self, specs):
    for i, s in enumerate(specs):
      yield i, _record(i, s.text, s.category,
                       include=[{"class": shape, "count": count, **({"color": c} if c else {})}
                                for shape, c, count in s.objects],
                       relation=s.relation)


class GenevalPrompts(_PromptBuilder):
  """GenEval (Ghosh et al. 2023): its 553 evaluation prompts as `test`, and
  GenEval-style training prompts as `train`: up to 500 per tag from
  data/geneval.py (seed 0), none of them a test prompt (GenEval tests every
  single object, so train has no single_object prompts)."""
  SOURCES = {"evaluation_metadata.jsonl":
             f"{_GITHUB}/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"}
  HOMEPAGE = "https://github.com/djghosh13/geneval"
  DEFAULT_SPLIT = "train"
  TRAIN_PER_TAG = 500

  def _split_generators(self, dl_manager):
    test = self._source(dl_manager, "evaluation_metadata.jsonl")
    held_out = [p.text for p in prompt_files.read(test)]
    train = geneval.generate(self.TRAIN_PER_TAG, seed=0, exclude_prompts=held_out,
                             at_most=True)
    return {"train": self._generate_examples(
                _record(i, r.pop("prompt"), r.pop("tag"), **r) for i, r in enumerate(train)),
            "test": self._generate_examples(_file_records(test))}

  def _generate_examples(self, records):
    for r in records:
      yield r["index"], r


class GenevalPlus(_PromptBuilder):
  """GenEval++ (Echo-4o, Ye et al. 2025), the benchmark the GvU paper reports:
  280 prompts in GenEval's metadata format, 40 for each of 7 tags."""
  SOURCES = {"Geneval++.jsonl": f"{_GITHUB}/yejy53/Echo-4o/main/test_scripts/Geneval++.jsonl"}
  HOMEPAGE = "https://github.com/yejy53/Echo-4o"

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples(self._source(dl_manager, "Geneval++.jsonl"))}

  def _generate_examples(self, path):
    for r in _file_records(path):
      yield r["index"], r


class T2iCompbench(_PromptBuilder):
  """T2I-CompBench (Huang et al. 2023): attribute binding (color, shape,
  texture), spatial, non-spatial and complex prompts; a train and a val file
  per category, one prompt per line. Tag = category."""
  SOURCES = {f"{c}_{s}.txt": f"{_GITHUB}/Karine-Huang/T2I-CompBench/main/examples/dataset/{c}_{s}.txt"
             for c in T2I_COMPBENCH_CATEGORIES for s in ("train", "val")}
  HOMEPAGE = "https://github.com/Karine-Huang/T2I-CompBench"
  DEFAULT_SPLIT = "+".join(f"{c}_val" for c in T2I_COMPBENCH_CATEGORIES)

  def _split_generators(self, dl_manager):
    return {f"{c}_{s}": self._generate_examples(self._source(dl_manager, f"{c}_{s}.txt"), c)
            for c in T2I_COMPBENCH_CATEGORIES for s in ("train", "val")}

  def _generate_examples(self, path, category):
    for i, p in enumerate(prompt_files.read(path)):
      yield i, _record(i, p.text.strip(), category)


class DpgBench(_PromptBuilder):
  """DPG-Bench (ELLA, Hu et al. 2024): 1065 dense prompts; dpg_bench.csv has one
  row per question, so a prompt is the first row of its item_id."""
  SOURCES = {"dpg_bench.csv": f"{_GITHUB}/TencentQQGYLab/ELLA/main/dpg_bench/dpg_bench.csv"}
  HOMEPAGE = "https://github.com/TencentQQGYLab/ELLA"

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples(self._source(dl_manager, "dpg_bench.csv"))}

  def _generate_examples(self, path):
    with open(path, encoding="utf-8", newline="") as f:
      rows = csv.DictReader(f)
      missing = {"item_id", "text"} - set(rows.fieldnames or ())
      if missing:
        raise InputError(f"{path}: no {sorted(missing)} column; expected DPG-Bench's "
                         "dpg_bench.csv")
      seen = {}
      for line, row in enumerate(rows, 2):
        if row["item_id"] in seen:
          continue
        if not (row["text"] or "").strip():
          raise InputError(f"{path}:{line}: empty text for item_id {row['item_id']!r}")
        seen[row["item_id"]] = len(seen)
        i = seen[row["item_id"]]
        yield i, _record(i, row["text"].strip(), "dpg_bench", row["item_id"])


class PromptFile(_PromptBuilder):
  """A user's prompt file (.txt, .jsonl, .csv); one split, `train`. Its config
  name is the file's stem and a hash of its bytes, so a changed file is a new
  dataset."""
  DEFAULT_SPLIT = "train"

  def __init__(self, *, path, **kwargs):
    self.path = os.path.abspath(path)
    if not os.path.isfile(self.path):
      raise InputError(f"{path}: no such prompt file")
    with open(self.path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9_]+", "_", os.path.splitext(os.path.basename(path))[0].lower())
    super().__init__(config=tfds.core.BuilderConfig(name=f"{stem}_{digest}"), **kwargs)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for r in _file_records(self.path):
      yield r["index"], r


BUILDERS = {"gvu_world": GvuWorld, "geneval_prompts": GenevalPrompts,
            "geneval_plus": GenevalPlus, "t2i_compbench": T2iCompbench,
            "dpg_bench": DpgBench}


def is_builder_spec(spec):
  return spec.split(":")[0] in BUILDERS


def builder(name, data_dir=None, path=None):
  """A prompt builder or, by its name, an understanding benchmark's (data/suites.py)."""
  if name == "prompt_file":
    return PromptFile(path=path, data_dir=data_dir)
  if name in suites.SUITES:
    return suites.builder(name, data_dir)
  if name not in BUILDERS:
    raise InputError(f"unknown prompt dataset {name!r}; expected one of "
                     f"{sorted(BUILDERS) + ['prompt_file']} or a benchmark "
                     f"{sorted(suites.SUITES)}")
  return BUILDERS[name](data_dir=data_dir)


def prepare(name, data_dir=None, manual_dir=None, path=None, allow_download=False):
  """The prepared builder: its array_record files written once into data_dir
  (TFDS's default when None), from manual_dir or, if allowed, the source URLs."""
  b = builder(name, data_dir, path)
  suites.prepare_once(b, manual_dir, allow_download)
  return b


def to_prompt(record):
  """A record read back from a data source -> a data.prompt_files.Prompt."""
  text = lambda k: record[k].decode("utf-8") if isinstance(record[k], bytes) else str(record[k])
  meta = json.loads(text("meta"))
  return prompt_files.Prompt(text("prompt"), text("tag"), text("id"),
                             tuple(sorted((k, json.dumps(v)) for k, v in meta.items())))


def data_sources(spec, data_dir=None, manual_dir=None):
  """NAME[:SPLIT[+SPLIT...]] -> (builder name, [random-access sources of records],
  one per split). The builder is prepared from manual_dir when it is not yet."""
  name, _, split = spec.partition(":")
  if name in suites.SUITES:
    raise InputError(f"{spec}: {name} is an understanding benchmark (data/suites.py), "
                     "not a prompt set")
  b = prepare(name, data_dir, manual_dir)
  split = split or b.DEFAULT_SPLIT
  known = sorted(b.info.splits)
  sources = []
  for s in split.split("+"):
    if s not in known:
      raise InputError(f"{spec}: {name} has no split {s!r}; expected one of {known}")
    sources.append(b.as_data_source(s))
  return name, sources


def main(argv):
  del argv
  f = flags.FLAGS
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)   # TFDS logs every stage and warns of a new folder
  tfds.disable_progress_bar()
  try:
    if f.manual_dir and not os.path.isdir(f.manual_dir):
      raise InputError(f"--manual_dir={f.manual_dir}: no such folder")
    with contextlib.redirect_stdout(io.StringIO()):   # TFDS prints its stages too
      b = prepare(f.name, f.data_dir or None, f.manual_dir or None, f.path or None,
                  allow_download=True)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{b.name}: {dict((k, v.num_examples) for k, v in b.info.splits.items())} "
        f"in {b.data_dir}")


def cli():
  """python -m gvu_jax.data.builders --name=NAME (flags defined only when run)."""
  flags.DEFINE_string("name", None, f"one of {sorted(BUILDERS) + ['prompt_file']} "
                      f"or a benchmark {sorted(suites.SUITES)}")
  flags.DEFINE_string("data_dir", "", "where TFDS keeps prepared datasets (default: TFDS's)")
  flags.DEFINE_string("manual_dir", "", "a folder with the source files, if you have them")
  flags.DEFINE_string("path", "", "the prompt file, for --name=prompt_file")
  flags.mark_flag_as_required("name")
  app.run(main)


if __name__ == "__main__":
  cli()
