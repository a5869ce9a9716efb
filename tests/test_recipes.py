"""docs/recipes.md against the recipes: each table row's gvu_jax value is the
recipe's value, and it equals the source's value unless the row says **differs**
(with a reason)."""

import ast
import os
import re

import pytest

from helpers_run import REPO, recipe_config

DOC = os.path.join(REPO, "docs", "recipes.md")


def literal(cell):
  """A table cell holding one backticked Python literal -> its value, else None."""
  m = re.fullmatch(r"`([^`]*)`", cell.strip())
  if not m:
    return None
  try:
    return ast.literal_eval(m.group(1))
  except (ValueError, SyntaxError):
    return None


def sections():
  """[(recipes the section is about, [(key, ours, source's, note)])] from the doc."""
  out = []
  for block in re.split(r"^## ", open(DOC, encoding="utf-8").read(), flags=re.M)[1:]:
    heading, _, body = block.partition("\n")
    recipes = re.findall(r"`configs/(\w+)\.py(?::(\w+))?`", heading)
    rows = []
    for line in body.splitlines():
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if len(cells) == 5 and re.fullmatch(r"`[\w.]+`", cells[0]):
        rows.append((cells[0].strip("`"), cells[1], cells[2], cells[4]))
    out.append((recipes, rows))
  return out


def config_value(config, key):
  value = config
  for part in key.split("."):
    value = value[part]
  return tuple(value) if isinstance(value, (list, tuple)) else value


CASES = [(f"{name}:{preset or 'default'}", name, preset or None, row)
         for recipes, rows in sections() for name, preset in recipes for row in rows]


def test_every_release_recipe_has_a_table():
  covered = {case[0] for case in CASES}
  assert {"xomni_en:default", "janus_pro_7b:lora", "janus_pro_1b:lora",
          "janus_pro_7b:t2i_r1"} <= covered
  assert len(CASES) > 80


@pytest.mark.parametrize("recipe, name, preset, row", CASES,
                         ids=[f"{c[0]}-{c[3][0]}" for c in CASES])
def test_recipe_value_is_the_documented_one(recipe, name, preset, row):
  key, ours, theirs, note = row
  want = literal(ours)
  assert want is not None, f"{recipe} {key}: the gvu_jax column must be a literal: {ours}"
  assert config_value(recipe_config(name, preset), key) == want
  if literal(theirs) is not None and literal(theirs) != want:
    assert note.startswith("**differs**:") and len(note) > 30, (
        f"{recipe} {key}: {ours} differs from the source's {theirs} without a reason")
