"""Prompt datasets (data/builders.py) built from fixture files written here,
read back through tfds.data_source and grain; the GvU prompt stream
(data/pipeline.py); the eval layouts (evaluation/benchmark_images.py). No network."""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gvu_jax import world
from gvu_jax.data import builders, geneval, pipeline, prompt_sources
from gvu_jax.data.prompt_files import Prompt
from gvu_jax.evaluation import benchmark_images
from gvu_jax.infra.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GENEVAL_TEST = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
     "prompt": "a photo of a dog"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}],
     "exclude": [{"class": "cat", "count": 3}], "prompt": "a photo of two cats"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"}]
GENEVAL_PLUS = [
    {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"},
                                      {"class": "cup", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red dog and a blue cup"},
    {"tag": "multi_count", "include": [{"class": "cat", "count": 2}, {"class": "bowl", "count": 3}],
     "prompt": "a photo of two cats and three bowls"}]
DPG_CSV = ("item_id,text,keywords,proposition_id,dependency,category_broad,tuple\n"
           "partiprompts1,\"A dense scene, with a fox.\",fox,1,0,entity,entity - whole (fox)\n"
           "partiprompts1,\"A dense scene, with a fox.\",fox,2,1,attribute,attribute (fox)\n"
           "countbench7,Three apples on a table.,apple,1,0,entity,entity - whole (apple)\n")


def t2i_prompts(category, split):
  return [f"a {category} {split} prompt {i}" for i in range(3)]


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  """Every public source file, in the benchmarks' own formats."""
  d = tmp_path_factory.mktemp("manual")
  (d / "evaluation_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_TEST))
  (d / "Geneval++.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_PLUS))
  for c in builders.T2I_COMPBENCH_CATEGORIES:
    for s in ("train", "val"):
      (d / f"{c}_{s}.txt").write_text("\n".join(t2i_prompts(c, s)) + "\n")
  (d / "dpg_bench.csv").write_text(DPG_CSV)
  return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, manual_dir):
  """Every builder prepared from manual_dir."""
  d = tmp_path_factory.mktemp("tfds")
  for name in builders.BUILDERS:
    builders.prepare(name, str(d), str(manual_dir))
  return d


def read_back(name, split, data_dir):
  """A split's records through tfds.data_source and grain."""
  source = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return list(grain.MapDataset.source(source).map(builders.to_prompt))


def test_geneval_builders_keep_the_metadata_and_order(data_dir):
  for name, split, rows in (("geneval_prompts", "test", GENEVAL_TEST),
                            ("geneval_plus", "test", GENEVAL_PLUS)):
    prompts = read_back(name, split, data_dir)
    assert [benchmark_images.metadata(p) for p in prompts] == rows
    assert [p.id for p in prompts] == [str(i) for i in range(len(rows))]


def test_geneval_train_split_is_generated_and_never_a_test_prompt(data_dir):
  train = read_back("geneval_prompts", "train", data_dir)
  tags = [p.category for p in train]
  # 500 a tag where there are that many: single_object has the 80 classes, counting
  # 80 x counts 2-4, less the test file's prompt of each
  assert {t: tags.count(t) for t in set(tags)} == {
      "single_object": 79, "counting": 239, "two_object": 500, "colors": 500,
      "position": 500, "color_attr": 500}
  assert not {p.text for p in train} & {r["prompt"] for r in GENEVAL_TEST}
  assert json.loads(dict(train[-1].meta)["include"])[0]["class"] in geneval.CLASSES


def test_t2i_compbench_dpg_and_world_builders(data_dir):
  for c in builders.T2I_COMPBENCH_CATEGORIES:
    for s in ("train", "val"):
      got = read_back("t2i_compbench", f"{c}_{s}", data_dir)
      assert [(p.text, p.category) for p in got] == [(t, c) for t in t2i_prompts(c, s)]
  dpg = read_back("dpg_bench", "test", data_dir)   # one prompt per item_id, in file order
  assert [(p.id, p.text) for p in dpg] == [("partiprompts1", "A dense scene, with a fox."),
                                           ("countbench7", "Three apples on a table.")]
  splits = world.split_specs(0, 0.2, 0.3)
  for split in ("pretrain", "gvu", "heldout"):
    got = read_back("gvu_world", split, data_dir)
    assert [(p.text, p.category) for p in got] == [(s.text, s.category)
                                                   for s in getattr(splits, split)]


def test_read_prompts_names_datasets_and_splits(data_dir):
  data = {"tfds_dir": str(data_dir), "manual_dir": ""}
  val = prompt_sources.read_prompts("t2i_compbench", data)   # default: every category's val file
  assert [p.text for p in val] == [t for c in builders.T2I_COMPBENCH_CATEGORIES
                                   for t in t2i_prompts(c, "val")]
  both = prompt_sources.read_prompts("t2i_compbench:color_val+shape_train", data)
  assert [p.text for p in both] == t2i_prompts("color", "val") + t2i_prompts("shape", "train")
  with pytest.raises(InputError, match=r"t2i_compbench:colour_val: t2i_compbench has no "
                                       r"split 'colour_val'; expected one of \['color_train'"):
    prompt_sources.read_prompts("t2i_compbench:colour_val", data)
  with pytest.raises(InputError, match=r"prompts='genevalplus': expected a prompt file "
                                       r"\(.txt, .jsonl, .csv\), 'world', or one of the datasets"):
    prompt_sources.read_prompts("genevalplus", data)


def test_a_missing_source_names_the_file_and_its_url_and_leaves_nothing(tmp_path):
  with pytest.raises(InputError, match=r"^geneval_plus: Geneval\+\+.jsonl is not in manual_dir "
                     r".*from https://raw.githubusercontent.com/yejy53/Echo-4o/.*or run python "
                     r"-m gvu_jax.data.builders --name=geneval_plus$"):
    builders.prepare("geneval_plus", str(tmp_path / "tfds"), str(tmp_path / "empty"))
  assert not (tmp_path / "tfds" / "geneval_plus").exists() or not any(
      (tmp_path / "tfds" / "geneval_plus").iterdir())
  assert not builders.builder("geneval_plus", str(tmp_path / "tfds")).is_prepared()


def test_prompt_file_builder_is_keyed_by_content(tmp_path):
  f = tmp_path / "My Prompts.jsonl"
  f.write_text('{"prompt": "a red cube", "tag": "colors", "include": [1]}\n{"prompt": "two"}\n')
  first = builders.prepare("prompt_file", str(tmp_path / "tfds"), path=str(f))
  got = list(grain.MapDataset.source(first.as_data_source("train")).map(builders.to_prompt))
  assert got == [Prompt("a red cube", "colors", "0", (("include", "[1]"),)),
                 Prompt("two", "prompts", "1", ())]
  assert first.builder_config.name.startswith("my_prompts_")
  f.write_text('{"prompt": "a red cube"}\n')
  assert builders.builder("prompt_file", str(tmp_path / "tfds"), str(f)).builder_config.name \
      != first.builder_config.name
  f.write_text('{"prompt": "a red cube"}\n{"prompt": \n')
  with pytest.raises(InputError, match=rf"^{f}:2: not valid JSON"):
    builders.prepare("prompt_file", str(tmp_path / "tfds"), path=str(f))


@pytest.mark.slow
def test_prepare_command_uses_manual_dir(manual_dir, tmp_path):
  run = subprocess.run([sys.executable, "-m", "gvu_jax.data.builders", "--name=dpg_bench",
                        f"--manual_dir={manual_dir}", f"--data_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  # one line of ours; TFDS's stage lines, warnings and bars stay out of the console
  assert run.stdout.strip().startswith("dpg_bench: {'test': 2} in ")
  assert len(run.stdout.strip().splitlines()) == 1 and not run.stderr.strip(), run.stderr


# --- the GvU prompt stream ---------------------------------------------------

PROMPTS = [Prompt(f"p{i}", "abc"[i % 3]) for i in range(10)]   # tags a: 4, b: 3, c: 3


def take(stream, k):
  return [[p.text for p in next(stream)] for _ in range(k)]


def test_grain_stream_balances_tags_and_covers_each_tag_per_epoch():
  rows = [p for batch in take(pipeline.GrainPrompts(PROMPTS, 4, seed=0), 6) for p in batch]
  tags = [PROMPTS[int(t[1:])].category for t in rows]
  assert tags == ["a", "b", "c"] * 8          # equal weights, interleaved
  for tag, n in (("a", 4), ("b", 3), ("c", 3)):
    mine = [t for t in rows if PROMPTS[int(t[1:])].category == tag]
    assert sorted(mine[:n]) == sorted(p.text for p in PROMPTS if p.category == tag)
  flat = [p for batch in take(pipeline.GrainPrompts(PROMPTS, 5, 0, balance_tags=False), 4)
          for p in batch]
  assert sorted(flat[:10]) == sorted(flat[10:]) == sorted(p.text for p in PROMPTS)
  assert flat[:10] != flat[10:]               # each epoch shuffled anew


def test_grain_stream_is_seeded_and_resumes_from_its_state():
  a = pipeline.GrainPrompts(PROMPTS, 4, seed=0)
  assert take(a, 5) == take(pipeline.GrainPrompts(PROMPTS, 4, seed=0), 5)
  assert take(pipeline.GrainPrompts(PROMPTS, 4, seed=1), 5) != take(
      pipeline.GrainPrompts(PROMPTS, 4, seed=0), 5)
  whole = take(pipeline.GrainPrompts(PROMPTS, 4, seed=0), 7)
  first = pipeline.GrainPrompts(PROMPTS, 4, seed=0)
  head = take(first, 3)
  state = json.loads(json.dumps(first.get_state()))   # as the checkpoint stores it
  assert state == first.position(3)   # (what older checkpoints, holding only the step, map to)
  second = pipeline.GrainPrompts(PROMPTS, 4, seed=0)
  second.set_state(state)
  assert head + take(second, 4) == whole


def test_a_prompt_set_smaller_than_one_batch_is_refused():
  with pytest.raises(InputError, match=r"^data.prompts=x.txt holds 3 prompts, fewer than one "
                                       r"batch \(gvu.prompts_per_step=4\)$"):
    pipeline.GrainPrompts(PROMPTS[:3], 4, 0, name="data.prompts=x.txt")


def test_drawn_stream_is_the_per_step_draw():
  specs = world.split_specs(0, 0.2, 0.3).gvu
  s = pipeline.DrawnPrompts(specs, 8, seed=3)
  next(s)
  assert s.get_state() == s.position(1)
  s.set_state(json.loads(json.dumps(s.get_state())))
  from gvu_jax.data import batches
  assert next(s) == batches.prompt_batch(specs, 8, batches.rng_for(3, "gvu", 1))


# --- eval layouts --------------------------------------------------------------

def images(n, size=4):
  return [np.full((size, size, 3), 40 * (k + 1), np.uint8) for k in range(n)]


def test_layouts_write_what_each_scorer_reads(tmp_path):
  ps = [Prompt("a red dog", "colors", "7", (("include", '[{"class": "dog"}]'),)),
        Prompt("a cup/mug", "color", "dpg1")]
  plus = benchmark_images.GenevalPlusLayout(str(tmp_path / "plus"), 2, ps)
  plus.write(1, ps[1], images(2))
  assert [json.loads(l) for l in (tmp_path / "plus" / "Geneval++.jsonl").read_text().splitlines()] \
      == [{"include": [{"class": "dog"}], "tag": "colors", "prompt": "a red dog"},
          {"tag": "color", "prompt": "a cup/mug"}]
  assert plus.done(1, ps[1]) and not plus.done(0, ps[0])
  assert np.asarray(Image.open(tmp_path / "plus" / "sample_1" / "1.png"))[0, 0, 0] == 80

  t2i = benchmark_images.T2iCompbenchLayout(str(tmp_path / "t2i"), 2, ps)
  t2i.write(1, ps[1], images(2))
  assert sorted(os.listdir(tmp_path / "t2i" / "color" / "samples")) == [
      "a cup mug_000000.png", "a cup mug_000001.png"]

  dpg = benchmark_images.DpgBenchLayout(str(tmp_path / "dpg"), 3, ps)
  dpg.write(1, ps[1], images(3))
  tile = np.asarray(Image.open(tmp_path / "dpg" / "dpg1.png"))
  assert tile.shape == (8, 8, 3)               # 2x2 crops at (0,0), (r,0), (0,r), (r,r)
  assert [tile[0, 0, 0], tile[0, 4, 0], tile[4, 0, 0], tile[4, 4, 0]] == [40, 80, 120, 0]
  assert not list((tmp_path / "dpg").glob("*.partial"))
  with pytest.raises(InputError, match=r"eval.images_per_prompt=5: DPG-Bench tiles at most 4"):
    benchmark_images.DpgBenchLayout(str(tmp_path / "dpg5"), 5, ps)


def test_offline_preparation_fails_fast_with_one_line(tmp_path, monkeypatch):
  """No network (here: a refused connection): one attempt, then one line naming
  the file, its URL and --manual_dir; nothing prepared, no partial file."""
  import time
  url = "http://127.0.0.1:9/Geneval++.jsonl"
  monkeypatch.setitem(builders.GenevalPlus.SOURCES, "Geneval++.jsonl", url)
  tic = time.perf_counter()
  with pytest.raises(InputError) as e:
    builders.prepare("geneval_plus", str(tmp_path / "tfds"), allow_download=True)
  assert time.perf_counter() - tic < builders.DOWNLOAD_TIMEOUT_S
  message = str(e.value)
  assert message.startswith(f"geneval_plus: Geneval++.jsonl: cannot download {url} (")
  assert message.endswith("pass it as --manual_dir=DIR") and "\n" not in message
  assert not builders.builder("geneval_plus", str(tmp_path / "tfds")).is_prepared()
  assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("args, expected", [
    (["--name=nope"], "unknown prompt dataset 'nope'; expected one of"),
    (["--name=geneval_plus", "--manual_dir=/no/such/folder"],
     "--manual_dir=/no/such/folder: no such folder"),
])
@pytest.mark.slow
def test_prepare_command_bad_input_is_one_line(tmp_path, args, expected):
  run = subprocess.run([sys.executable, "-m", "gvu_jax.data.builders", *args,
                        f"--data_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
  assert run.returncode == 2 and run.stderr.strip().startswith("error: ")
  assert expected in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


HOSTILE = ["../../../../../ESCAPED", "/etc/passwd", "..", ".", "a\x00b", "x" * 300,
           "é" * 200, "a\\b", "\n\t", "", "ok", "ok", "a/b", "a b"]


@pytest.mark.parametrize("layout_cls, field", [(benchmark_images.T2iCompbenchLayout, "text"),
                                               (benchmark_images.T2iCompbenchLayout, "category"),
                                               (benchmark_images.DpgBenchLayout, "id")])
def test_no_prompt_field_writes_outside_the_folder_or_over_another_prompt(tmp_path,
                                                                          layout_cls, field):
  """Prompt text, tag and id become paths: any of them (traversal, absolute, NUL,
  over-long, empty, duplicate, or two that read alike once made safe) names files
  inside the output folder, short enough for the file system, one prompt's files
  never another's."""
  prompts = [Prompt(**{"text": "a photo", "category": "c", "id": str(i), field: v or "_"})
             if field != "text" else Prompt(v or "_", "c", str(i))
             for i, v in enumerate(HOSTILE)]
  out = tmp_path / "out"
  layout = layout_cls(str(out), 2, prompts)
  for i, p in enumerate(prompts):
    layout.write(i, p, images(2))
  written = [os.path.relpath(os.path.join(root, f), out) for root, _, fs in os.walk(out)
             for f in fs]
  assert not [p for p in tmp_path.rglob("*") if out not in p.parents and p != out]
  per_prompt = 1 if layout_cls is benchmark_images.DpgBenchLayout else 2
  assert len(written) == len(set(written)) == per_prompt * len(prompts)
  assert all(len(part.encode()) <= 255 for w in written for part in w.split(os.sep))
  assert all(layout.done(i, p) for i, p in enumerate(prompts))


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=400))
def test_a_safe_name_is_one_path_component(text):
  name = benchmark_images.safe_name(text)
  assert name and os.sep not in name and "\\" not in name and "\0" not in name
  assert name not in (".", "..") and not name.startswith(".")
  assert len(name.encode()) <= benchmark_images.NAME_BYTES
