"""What every stage shares: the config, the model block, the workdir, the
tokenizer and templates, the prompts and the image tokenizer.

Two kinds of run:
  the embedded world (configs/synthetic.py): the model is the recipe's `model`,
      pretrained from scratch; prompts come from the world's splits.
  a converted checkpoint (configs/janus_*.py, `checkpoint=DIR` from
      `python -m gvu_jax.convert`): the model block is read from DIR, the
      tokenizer and templates are the checkpoint's, and GvU prompts come from
      `data.prompts` (a .txt/.jsonl/.csv prompt file, a prompt dataset, or "world").
"""

import dataclasses
import os

from gvu_jax import hosts, metrics, reward, sharding
from gvu_jax.text import janus as janus_text
from gvu_jax.text import synthetic as text
from gvu_jax.text import xomni as xomni_text
from gvu_jax import world
from gvu_jax.data import prompt_files
from gvu_jax.data.prompt_files import Prompt
from gvu_jax.errors import InputError
from gvu_jax.models import build, presets


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


@dataclasses.dataclass
class Context:
  config: object
  model: object               # the `model` block (recipe's, or the checkpoint's)
  workdir: str
  tokenizer: object
  templates: text.Templates
  pretrain_specs: list        # paired with renders in pretraining
  gvu_specs: list             # the GvU stage's prompts (text only)
  heldout_specs: list         # evaluation only
  image_tokenizer: object
  reward_weights: object      # per-token-id weights for the `weighted` reward
  layout: sharding.Layout     # the device mesh and where each array lives on it

  @classmethod
  def create(cls, config, workdir):
    if config.get("checkpoint"):
      return cls._for_checkpoint(config, workdir)
    tokenizer = text.synthetic_tokenizer()
    m = config.model
    if tokenizer.get_vocab_size() != m.lm.vocab_size:
      raise InputError(f"model.lm.vocab_size={m.lm.vocab_size} but the tokenizer has "
                       f"{tokenizer.get_vocab_size()} tokens")
    d = config.data
    try:
      splits = world.split_specs(d.split_seed, d.heldout_fraction, d.gvu_fraction)
    except ValueError as e:
      raise InputError(str(e)) from None
    return cls._with(config, m, workdir, tokenizer,
                     text.Templates(tokenizer, m.image_tokens, m.max_prompt_tokens),
                     splits.pretrain, splits.gvu or splits.pretrain, splits.heldout)

  @classmethod
  def _for_checkpoint(cls, config, workdir):
    from gvu_jax import convert
    path = config.checkpoint
    m = convert.read_converted_config(path)
    expect = config.get("expect_model", "any")
    diff = presets.difference(expect, m) if expect != "any" else None
    if diff:
      key, want, got = diff
      raise InputError(f"checkpoint={path} is not {expect}: {key} is {got}, expected {want} "
                       "(set --config.expect_model=any to run it anyway)")
    m.update(dict(config.model_options))       # run-time choices: dtype, remat, prompt room
    tokenizer = janus_text.load_tokenizer(path)
    if m.family == "xomni":                    # X-Omni writes images of any grid
      m.image_tokens = m.image_grid[0] * m.image_grid[1]
      templates = xomni_text.XOmniTemplates(tokenizer, m.image_grid, m.max_prompt_tokens,
                                            m.lm.vocab_size, m.get("system_prompt"))
    else:
      templates = janus_text.JanusTemplates(tokenizer, m.image_tokens, m.max_prompt_tokens,
                                            style=m.template)
    prompts = read_prompts(config.data.prompts, config.data)
    hosts.check_same(f"data.prompts={config.data.prompts}", [list(p) for p in prompts])
    return cls._with(config, m, workdir, tokenizer, templates, [], prompts, [])

  @classmethod
  def _with(cls, config, m, workdir, tokenizer, templates, pretrain, gvu, heldout):
    """The context; the image tokenizer and reward weights follow from the rest."""
    return cls(config=config, model=m, workdir=workdir, tokenizer=tokenizer,
               templates=templates, pretrain_specs=pretrain, gvu_specs=gvu,
               heldout_specs=heldout, image_tokenizer=build.image_tokenizer(m),
               reward_weights=reward.token_weight_table(
                   tokenizer, dict(config.reward.token_weights), m.lm.vocab_size),
               layout=sharding.Layout.from_config(config))

  def load_base(self):
    """The converted checkpoint -> (graphdef, params) of the base model."""
    from gvu_jax import convert
    metrics.status(f"loading {self.config.checkpoint}")
    _, params = convert.load(self.config.checkpoint, like_model=self.model, layout=self.layout)
    graphdef, _ = build.abstract(self.model)
    return graphdef, params

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)
