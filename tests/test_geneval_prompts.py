"""The GenEval-style prompt generator: GenEval's vocabulary and templates, its
metadata format, determinism, and files the prompt reader takes."""

import json
import subprocess
import sys

import pytest

from gvu_jax.data import geneval, prompt_files
from gvu_jax.infra.errors import InputError
from helpers_run import REPO


def test_vocabulary():
  assert len(geneval.CLASSES) == len(set(geneval.CLASSES)) == 80
  assert len(geneval.COLORS) == 10 and geneval.TAGS[0] == "single_object"
  assert [geneval.plural(c) for c in ("dog", "bus", "couch", "wine glass", "person", "knife",
                                      "computer mouse", "sheep")] == [
      "dogs", "buses", "couches", "wine glasses", "people", "knives", "computer mice", "sheep"]
  assert geneval.with_article("orange") == "an orange"
  assert geneval.with_article("red apple") == "a red apple"


def test_records_follow_the_templates():
  records = geneval.generate(40, seed=3)
  assert [r["tag"] for r in records] == [t for t in geneval.TAGS for _ in range(40)]
  assert len({r["prompt"] for r in records}) == len(records)
  for r in records:
    inc = r["include"]
    names = [i["class"] for i in inc]
    assert all(n in geneval.CLASSES for n in names)
    if r["tag"] == "single_object":
      assert r["prompt"] == f"a photo of {geneval.with_article(names[0])}"
    elif r["tag"] == "counting":
      n = inc[0]["count"]
      assert 2 <= n <= 4 and r["exclude"] == [{"class": names[0], "count": n + 1}]
      assert r["prompt"] == f"a photo of {geneval.NUMBERS[n]} {geneval.plural(names[0])}"
    elif r["tag"] == "position":
      relation, anchor = inc[1]["position"]
      assert anchor == 0 and relation in geneval.POSITIONS and names[0] != names[1]
      assert r["prompt"] == (f"a photo of {geneval.with_article(names[1])} {relation} "
                             f"{geneval.with_article(names[0])}")
    elif r["tag"] == "color_attr":
      c0, c1 = inc[0]["color"], inc[1]["color"]
      assert c0 != c1 and r["prompt"] == (
          f"a photo of {geneval.with_article(c0 + ' ' + names[0])} and "
          f"{geneval.with_article(c1 + ' ' + names[1])}")
  assert geneval.generate(40, seed=3) == records
  assert geneval.generate(40, seed=4) != records


def test_excluded_prompts_are_never_made():
  held_out = {r["prompt"] for r in geneval.generate(30, seed=0, tags=("colors",))}
  fresh = geneval.generate(30, seed=0, tags=("colors",), exclude_prompts=held_out)
  assert not held_out & {r["prompt"] for r in fresh}
  with pytest.raises(InputError, match="cannot make 81 distinct single_object prompts"):
    geneval.generate(81, tags=("single_object",))   # there are 80 classes


@pytest.mark.slow
def test_command_writes_a_prompt_file_and_never_overwrites(tmp_path):
  out = tmp_path / "train.jsonl"
  run = lambda: subprocess.run([sys.executable, "-m", "gvu_jax.data.geneval", f"--out={out}",
                                "--per_tag=5", "--seed=1"], cwd=REPO, capture_output=True,
                               text=True)
  assert run().returncode == 0
  prompts = prompt_files.read(str(out))
  assert [p.text for p in prompts] == [r["prompt"] for r in geneval.generate(5, seed=1)]
  assert [p.category for p in prompts][::5] == list(geneval.TAGS)
  assert json.loads(dict(prompts[0].meta)["include"])[0]["count"] == 1
  before = out.read_bytes()
  again = run()
  assert again.returncode != 0 and "exists; not overwritten" in again.stderr
  assert out.read_bytes() == before
