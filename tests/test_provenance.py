"""What a stage's record (run.json) is compared on, key by key: a key added after
records began matches a record written without it while it keeps its old
behaviour, and is refused, by name, once set otherwise."""

import json
import os

import pytest

from gvu_jax.infra import provenance
from helpers_run import REPO, recipe_config

RECIPES = ("synthetic", "janus_pro_1b", "janus_pro_7b", "xomni_en")
# The stage keys every recipe recorded when run.json was first written.
FIRST_RECORD = json.load(open(os.path.join(REPO, "tests", "fixtures",
                                           "provenance_keys_first_record.json")))


def stage_keys(stage):
  return {key for name in RECIPES for key in provenance.stage_config(recipe_config(name), stage)}


@pytest.mark.parametrize("stage", ["pretrain", "gvu"])
def test_every_key_added_since_records_began_says_what_matches_a_record_without_it(stage):
  """A new result-affecting key must be in INTRODUCED (or runtime), or every
  workdir written before it would be refused, or silently differ."""
  added = stage_keys(stage) - set(FIRST_RECORD[stage])
  assert added <= set(provenance.INTRODUCED), sorted(added - set(provenance.INTRODUCED))


def old_record(tmp_path, config, stage, missing):
  """A stage record as written before `missing` existed."""
  keys = provenance.stage_config(config, stage)
  upstream = provenance.upstream(config, stage)
  keys.pop(missing, None)
  if upstream:
    upstream.pop(missing, None)
  provenance.record(str(tmp_path), stage, keys, upstream)


@pytest.mark.parametrize("key, before", sorted(provenance.INTRODUCED.items()))
@pytest.mark.parametrize("stage", ["pretrain", "gvu"])
def test_a_record_without_a_new_key_matches_only_its_old_behaviour(tmp_path, key, before, stage):
  config = recipe_config("synthetic", "mini")
  block, name = key.split(".", 1)
  config[block][name] = before
  old_record(tmp_path, config, stage, key)
  check = lambda: provenance.differences(str(tmp_path), provenance.stage_config(config, stage),
                                         provenance.upstream(config, stage))
  assert check() == []
  # a config written before the key (without it) matches too
  del config[block][name]
  assert check() == []
  config[block][name] = type(before)(1) if before != 1 else type(before)(2)
  change = f"{key}: {json.dumps(before)} -> {json.dumps(config[block][name])}"
  expected = sorted(([change] if key in provenance.stage_config(config, stage) else []) +
                    ([f"upstream {change}"] if key in (provenance.upstream(config, stage) or {})
                     else []))
  assert expected and check() == expected
