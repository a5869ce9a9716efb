"""A run's inputs, by its kind, stated once (`create`):

  EmbeddedRun    the embedded world (configs/synthetic.py): the model is the
                 recipe's `model`, pretrained from scratch; prompts come from the
                 world's splits, whose judge grades them.
  CheckpointRun  a converted checkpoint (configs/janus_*.py, xomni_en.py,
                 `checkpoint=DIR` from `python -m gvu_jax.convert`): the model
                 block is read from DIR, the tokenizer and templates are the
                 checkpoint's, and GvU prompts come from `data.prompts` (a
                 .txt/.jsonl/.csv prompt file, a prompt dataset, or "world").

Both carry what every stage reads: the config, the model block, the workdir, the
tokenizer and templates, the GvU prompts, the image tokenizer and the mesh.
"""

import dataclasses
import os

from gvu_jax import world
from gvu_jax.data import pipeline, prompt_sources
from gvu_jax.infra import checkpoint, hosts, metrics, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models import build, presets
from gvu_jax.rl import reward
from gvu_jax.stages import config_check
from gvu_jax.text import janus as janus_text, synthetic as text, xomni as xomni_text


@dataclasses.dataclass(kw_only=True)
class Run:
  """What every kind of run shares."""
  config: object
  model: object               # the `model` block (recipe's, or the checkpoint's)
  workdir: str
  tokenizer: object
  templates: object           # the family's templates (text/synthetic.py, janus.py, xomni.py)
  gvu_specs: list             # the GvU stage's prompts (text only)
  image_tokenizer: object
  reward_weights: object      # per-token-id weights for the `weighted` reward
  layout: sharding.Layout     # the device mesh and where each array lives on it

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)


@dataclasses.dataclass(kw_only=True)
class EmbeddedRun(Run):
  """The embedded world: pretraining, then GvU, each evaluated by the world's judge."""
  templates: text.Templates
  pretrain_specs: list        # paired with renders in pretraining
  heldout_specs: list         # evaluation only
  has_judge = True            # its prompts are the world's: the judge grades images of them
  source = None               # GvU's upstream is the pretraining (infra/provenance.py)

  def gvu_prompts(self):
    """GvU's prompts, gvu.prompts_per_step a step: the world's per-step draws."""
    return pipeline.DrawnPrompts(self.gvu_specs, self.config.gvu.prompts_per_step,
                                 self.config.seed)

  def gvu_reference(self, base_params):
    """The reference policy: the pretrained weights, copied into the GvU stage (a
    resumed run keeps the reference it started with)."""
    path = self.path("gvu", "reference")
    if hosts.agreed("gvu reference", lambda: os.path.exists(path)):
      return checkpoint.load_frozen(path, base_params)
    checkpoint.save_frozen(path, base_params)
    return base_params


@dataclasses.dataclass(kw_only=True)
class CheckpointRun(Run):
  """GvU on a converted checkpoint, or benchmark images of it and of its policy."""
  checkpoint: str             # the conversion's directory
  has_judge = False

  @property
  def source(self):
    """What GvU starts from: the conversion (its path and what it recorded)."""
    from gvu_jax.interop import convert
    return {"checkpoint": os.path.abspath(self.checkpoint),
            "conversion": convert.conversion_info(self.checkpoint)}

  def gvu_prompts(self):
    """GvU's prompts, gvu.prompts_per_step a step: a grain pipeline over data.prompts,
    every prompt checked to fit first."""
    c, name = self.config, f"data.prompts={self.config.data.prompts}"
    prompt_sources.check_prompts(self.templates, self.gvu_specs, name)
    return pipeline.GrainPrompts(self.gvu_specs, c.gvu.prompts_per_step, c.seed,
                                 c.data.balance_tags, name=name)

  def gvu_reference(self, base_params):
    """The reference policy: the checkpoint itself (nothing to copy)."""
    return base_params

  def load_base(self):
    """The converted checkpoint -> (graphdef, params) of the base model."""
    from gvu_jax.interop import convert
    metrics.status(f"loading {self.checkpoint}")
    _, params = convert.load(self.checkpoint, like_model=self.model, layout=self.layout)
    graphdef, _ = build.abstract(self.model)
    return graphdef, params


def create(config, workdir):
  """The run `config` describes -> an EmbeddedRun or a CheckpointRun."""
  if config_check.runs_a_checkpoint(config):
    return _checkpoint_run(config, workdir)
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
  return EmbeddedRun(
      **_shared(config, m, workdir, tokenizer), gvu_specs=splits.gvu or splits.pretrain,
      templates=text.Templates(tokenizer, m.image_tokens, m.max_prompt_tokens),
      pretrain_specs=splits.pretrain, heldout_specs=splits.heldout)


def _checkpoint_run(config, workdir):
  from gvu_jax.interop import convert
  path = config.checkpoint
  if not path:
    raise InputError("config.checkpoint is required: a directory written by "
                     "python -m gvu_jax.convert")
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
  prompts = prompt_sources.read_prompts(config.data.prompts, config.data)
  hosts.check_same(f"data.prompts={config.data.prompts}", [list(p) for p in prompts])
  return CheckpointRun(**_shared(config, m, workdir, tokenizer), templates=templates,
                       gvu_specs=prompts, checkpoint=path)


def _shared(config, m, workdir, tokenizer):
  """The fields that follow from the rest: the image tokenizer, the reward's
  token weights and the mesh."""
  return dict(config=config, model=m, workdir=workdir, tokenizer=tokenizer,
              image_tokenizer=build.image_tokenizer(m),
              reward_weights=reward.token_weight_table(
                  tokenizer, dict(config.reward.token_weights), m.lm.vocab_size),
              layout=sharding.Layout.from_config(config))
