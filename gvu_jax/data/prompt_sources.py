"""Where a run's prompts come from: the embedded world, a prompt file, or a prompt
dataset; and the check that every one of them fits the model's prompt room."""

import os

from gvu_jax import world
from gvu_jax.data import prompt_files
from gvu_jax.data.prompt_files import Prompt
from gvu_jax.infra.errors import InputError


def read_prompts(source, data):
  """`data.prompts` (or `eval.prompts`) -> [Prompt]: "world" (the embedded world's
  GenEval-style training prompts), a prompt file (.txt, .jsonl, .csv:
  data/prompt_files.py) or a prompt dataset, NAME[:SPLIT] (data/builders.py),
  read through tfds.data_source and grain; `data` says where TFDS keeps it."""
  if source == "world":
    return [Prompt(s.text, s.category) for s in world.split_specs(0).pretrain]
  if os.path.splitext(source)[1].lower() in prompt_files.FORMATS or os.sep in source:
    return prompt_files.read(source)
  import grain                                  # (TFDS takes a second to import)
  from gvu_jax.data import builders
  if not builders.is_builder_spec(source):
    raise InputError(f"prompts={source!r}: expected a prompt file "
                     f"({', '.join(prompt_files.FORMATS)}), 'world', or one of the datasets "
                     f"{sorted(builders.BUILDERS)} as NAME or NAME:SPLIT")
  _, sources = builders.data_sources(source, data.get("tfds_dir") or None,
                                     data.get("manual_dir") or None)
  return [p for s in sources for p in grain.MapDataset.source(s).map(builders.to_prompt)]


def check_prompts(templates, prompts, source):
  """Every prompt encodes and fits the prompt room, or one error naming the first
  that does not (before any compute; a run would meet it steps later)."""
  for p in prompts:
    try:
      templates.encode_prompt(p.text)
    except InputError as e:
      raise InputError(f"{source}: prompt id {p.id!r}: {e}") from None
