"""Every value of a resolved config, checked once, before anything runs.

`check(config)` walks the config and holds each key to its rule in RULES (type,
range or choices; numbers must be finite), then to the relations between keys
(RELATIONS). The first problem ends the run with one line naming the key, its
value and what it must be, e.g.

  gvu.lr=nan: expected a finite number > 0

A key without a rule is refused too (a recipe's own typo). What needs the
devices (the mesh against the device count, batches against the mesh) is checked
by sharding.Layout as the context is built, also before anything is written.
"""

import math
import re

from gvu_jax.evaluation.benchmark_images import LAYOUTS
from gvu_jax.evaluation.protocols import ANSWER_PATHS, PROTOCOLS
from gvu_jax.evaluation.suite_scores import SCORES as SUITES
from gvu_jax.infra.accelerators import MACHINES
from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert import DTYPES
from gvu_jax.models.attention import IMPLEMENTATIONS
from gvu_jax.rl.optimizer import SCHEDULES
from gvu_jax.rl.reward import AGGREGATIONS

MODES = ("all", "pretrain", "eval", "gvu", "bench")


def runs_a_checkpoint(config):
  """The kind of run a recipe describes: a converted checkpoint's recipe
  (configs/janus_*.py, xomni_en.py) has a `checkpoint` key, the embedded world's
  (configs/synthetic.py) has none. The one place that tells them apart; the run
  itself is stages/context.py's EmbeddedRun or CheckpointRun."""
  return "checkpoint" in config
SEED_LIMIT = 2**31   # jax keys hold 32 bits and the LoRA adapters draw from seed + 1


class Rule:
  """`accepts(value)` -> bool; `what` says what is accepted, for the message;
  `lowest`: the least integer accepted, for integer rules."""

  def __init__(self, accepts, what, lowest=None):
    self.accepts, self.what, self.lowest = accepts, what, lowest


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(lo=None, hi=None):
  what = "an integer" + (f" >= {lo}" if hi is None and lo is not None else "") + (
      f" in [{lo}, {hi}]" if hi is not None else "")
  return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
              what, lowest=lo)


def number(lo=None, hi=None, lo_open=False, hi_open=False):
  """A finite number in the interval."""
  if lo is not None and hi is not None:
    what = f"a finite number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  elif lo is not None:
    what = f"a finite number {'>' if lo_open else '>='} {lo}"
  else:
    what = "a finite number"

  def accepts(v):
    if not _is_number(v):
      return False
    above = lo is None or (v > lo if lo_open else v >= lo)
    below = hi is None or (v < hi if hi_open else v <= hi)
    return above and below

  return Rule(accepts, what)


def choice(*options):
  return Rule(lambda v: isinstance(v, str) and v in options, f"one of {list(options)}")


def boolean():
  return Rule(lambda v: isinstance(v, bool), "True or False")


def text():
  return Rule(lambda v: isinstance(v, str) and "\0" not in v, "a string")


def tpu_slice():
  """A TPU slice as libtpu names it (chip generation : chips along each axis); which
  generations exist is libtpu's to say (gvu_jax.tools.topology.devices)."""
  shape = re.compile(r"[A-Za-z0-9_ -]+:[0-9]+(x[0-9]+)+")
  return Rule(lambda v: isinstance(v, str) and (v == "" or shape.fullmatch(v) is not None),
              "'' or a TPU slice such as v5e:2x4 or v4:2x2x1")


def optional(rule):
  return Rule(lambda v: v is None or rule.accepts(v), f"None or {rule.what}")


def integers(length=None, lo=1, allow_empty=False):
  def accepts(v):
    return (isinstance(v, (tuple, list)) and (length is None or len(v) == length)
            and (allow_empty or len(v) > 0) and all(_is_int(x) and x >= lo for x in v))
  size = f"{length} " if length else ""
  return Rule(accepts, f"a tuple of {size}integers >= {lo}")


def words(options=None, allow_empty=False):
  def accepts(v):
    return (isinstance(v, (tuple, list)) and (allow_empty or len(v) > 0)
            and all(isinstance(x, str) and (options is None or x in options) for x in v))
  return Rule(accepts, "a tuple of " + (f"names from {list(options)}" if options else "names")
              + (" (may be empty)" if allow_empty else ""))


def anything(what):
  return Rule(lambda v: True, what)


def word_weights():
  return Rule(lambda v: hasattr(v, "items") and all(
      isinstance(k, str) and k and _is_number(w) and w >= 0 for k, w in v.items()),
      "a dict of word -> finite weight >= 0")


def mesh_axis():
  return Rule(lambda v: _is_int(v) and (v == -1 or v >= 1), "a positive integer or -1 (the rest)",
              lowest=-1)


def _optimizer(prefix):
  return {f"{prefix}.steps": integer(1), f"{prefix}.lr": number(0, lo_open=True),
          f"{prefix}.warmup_steps": integer(0), f"{prefix}.schedule": choice(*SCHEDULES),
          f"{prefix}.adam_b1": number(0, 1, hi_open=True),
          f"{prefix}.adam_b2": number(0, 1, hi_open=True),
          f"{prefix}.adam_eps": number(0, lo_open=True), f"{prefix}.weight_decay": number(0),
          f"{prefix}.max_grad_norm": number(0, lo_open=True),
          f"{prefix}.log_every": integer(1), f"{prefix}.checkpoint_every": integer(1),
          f"{prefix}.keep": integer(1)}


def _sampling(prefix):
  return {f"{prefix}.temperature": number(0, lo_open=True), f"{prefix}.top_k": integer(0),
          f"{prefix}.top_p": number(0, 1, lo_open=True), f"{prefix}.min_p": number(0, 1, hi_open=True),
          f"{prefix}.cfg_weight": number()}


RULES = {
    "mode": choice(*MODES),
    "seed": integer(0, SEED_LIMIT - 1),
    # a converted checkpoint's recipe
    "checkpoint": text(), "expect_model": text(), "random_init": boolean(),
    "model_options.dtype": choice(*DTYPES), "model_options.remat": boolean(),
    "model_options.max_prompt_tokens": integer(1),
    "model_options.attention": choice(*IMPLEMENTATIONS),
    "model_options.mlp_chunks": integer(1),
    "model_options.image_grid": integers(length=2), "model_options.system_prompt": optional(text()),
    # the embedded world's model block (models/presets.py)
    "model.family": choice("janus", "xomni"), "model.image_tokenizer": choice("cells", "vq16", "tokens"),
    "model.dtype": choice(*DTYPES), "model.remat": boolean(), "model.attention": choice(*IMPLEMENTATIONS),
    "model.template": text(),
    "mesh.data": mesh_axis(), "mesh.fsdp": mesh_axis(), "mesh.tensor": mesh_axis(),
    "mesh.rollout_gathered": boolean(),
    "watchdog_s": Rule(lambda v: _is_int(v) and v >= -1, "seconds (an integer >= 1), 0 (off) "
                       "or -1 (1800 on several hosts, off on one)", lowest=-1),
    "mesh.rules": anything("logical axis rules (checked by sharding.Layout)"),
    "data.prompts": text(), "data.balance_tags": boolean(), "data.tfds_dir": text(),
    "data.manual_dir": text(), "data.split_seed": integer(0, SEED_LIMIT - 1),
    "data.heldout_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.gvu_fraction": number(0, 1, hi_open=True),
    **_optimizer("pretrain"),
    "pretrain.batch_size": integer(1), "pretrain.cond_dropout": number(0, 1, hi_open=True),
    "pretrain.t2i_mislabel": number(0, 1, hi_open=True),
    "pretrain.near_miss_ranking": number(0),
    **_optimizer("gvu"),
    "gvu.prompts_per_step": integer(1), "gvu.group_size": integer(2), "gvu.mu": integer(1),
    "gvu.grad_accum": integer(1), "gvu.clip_eps": number(0, lo_open=True), "gvu.beta": number(0),
    "gvu.scale_advantages_by_std": boolean(), "gvu.shared_prompt_pass": boolean(),
    "gvu.grid_every": integer(0),
    "gvu.max_nonfinite_steps": integer(1),
    "gvu.lora.enabled": boolean(), "gvu.lora.rank": integer(1),
    "gvu.lora.alpha": number(0, lo_open=True),
    "gvu.lora.targets": words(("q", "k", "v", "o", "gate", "up", "down")),
    "gvu.full_ft_modules": words(allow_empty=True),
    **_sampling("gvu.sampling"),
    "reward.kind": choice("intrinsic", "shuffled", "judge"),
    "reward.aggregation": choice(*AGGREGATIONS),
    "reward.judge": choice("policy", "reference"), "reward.token_weights": word_weights(),
    "reward.quantize_pixels": boolean(),
    "eval.batch_size": integer(1), "eval.images_per_category": integer(1),
    "eval.num_distractors": integer(1), "eval.images_per_prompt": integer(1),
    "eval.prompts": text(), "eval.layout": choice("auto", *LAYOUTS),
    "eval.understanding": Rule(
        lambda v: isinstance(v, str) and all(n.strip() in SUITES for n in v.split(",")
                                             if n.strip()),
        f"a comma-separated list of {list(SUITES)} (or empty)"),
    "eval.understanding_protocol": choice(*PROTOCOLS),
    "eval.understanding_answers": choice(*ANSWER_PATHS), "eval.reply_tokens": integer(1),
    **_sampling("eval.sampling"),
    "bench.sampler_batches": integers(), "bench.cfg_weight": number(),
    "bench.prompt_tokens": integer(1), "bench.vq_images": integer(1),
    "bench.reward_images": integer(1), "bench.reward_answer_tokens": integer(1),
    "bench.reference_forwards": integer(0), "bench.repeats": integer(1),
    "bench.transformers": boolean(), "bench.analysis_only": boolean(),
    "bench.machine": choice("", *MACHINES), "bench.topology": tpu_slice(),
    "logging.tensorboard": boolean(), "logging.wandb_project": text(),
    "logging.wandb_entity": text(),
    "profile.steps": Rule(lambda v: isinstance(v, (tuple, list)) and (
        len(v) == 0 or integers(length=2).accepts(v)), "() (off) or (START, END), GvU steps >= 1"),
}


def _model_size(key, value):
  """The rest of the embedded world's `model` block: sizes and constants."""
  if key.endswith(("norm_eps", "rope_theta")):
    return number(0, lo_open=True)
  if isinstance(value, (tuple, list)):
    return integers()
  return integer(1)


def _relations(c):
  """(key, value, expectation) of the first relation between keys that fails."""
  if "gvu" in c:
    rows = c.gvu.prompts_per_step * c.gvu.group_size
    if rows % c.gvu.grad_accum:
      return ("gvu.grad_accum", c.gvu.grad_accum,
              f"a divisor of the rollout's {rows} rows (gvu.prompts_per_step x gvu.group_size)")
    if c.gvu.get("shared_prompt_pass") and c.gvu.prompts_per_step % c.gvu.grad_accum:
      return ("gvu.grad_accum", c.gvu.grad_accum,
              f"a divisor of gvu.prompts_per_step={c.gvu.prompts_per_step} (with "
              "gvu.shared_prompt_pass each micro-batch holds whole groups)")
  if "reward" in c and c.reward.kind == "judge" and runs_a_checkpoint(c):
    return ("reward.kind", c.reward.kind, "intrinsic or shuffled for a converted checkpoint "
            "(the judge, the ceiling run's reward, exists only in the embedded world)")
  if "profile" in c and len(c.profile.steps) == 2 and c.profile.steps[0] > c.profile.steps[1]:
    return ("profile.steps", tuple(c.profile.steps), "START <= END")
  if "data" in c and "gvu_fraction" in c.data:
    if c.data.heldout_fraction + c.data.gvu_fraction >= 1:
      return ("data.gvu_fraction", c.data.gvu_fraction,
              f"below 1 - data.heldout_fraction = {1 - c.data.heldout_fraction:g} "
              "(pretraining needs prompts)")
  if "model" in c and "lm" in c.model:
    lm = c.model.lm
    if lm.hidden % lm.heads or lm.heads % lm.kv_heads:
      return ("model.lm.heads", lm.heads, f"a divisor of model.lm.hidden={lm.hidden} and a "
              f"multiple of model.lm.kv_heads={lm.kv_heads}")
  return None


def flatten(config, prefix=""):
  """{dotted key: value} of every leaf of a ConfigDict (dicts inside are leaves
  only where a rule takes the whole dict, as reward.token_weights)."""
  out = {}
  for key, value in config.items():
    path = prefix + key
    if hasattr(value, "items") and path not in RULES:
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def _shown(value):
  """A value as the message quotes it, on one line (a ConfigDict's repr is YAML)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


def check(config):
  """Raises InputError naming the first key whose value breaks its rule."""
  for key, value in flatten(config).items():
    rule = RULES.get(key) or (_model_size(key, value) if key.startswith("model.") else None)
    if rule is None:
      raise InputError(f"{key}: not a setting gvu_jax knows (no rule for it in "
                       "gvu_jax/stages/config_check.py)")
    if not rule.accepts(value):
      raise InputError(f"{key}={_shown(value)}: expected {rule.what}")
  bad = _relations(config)
  if bad:
    key, value, what = bad
    raise InputError(f"{key}={_shown(value)}: expected {what}")
