r"""gvu_jax entry point.

  python -m gvu_jax.main --config=configs/synthetic.py[:preset] --workdir=DIR \
      [--config.mode=all|pretrain|eval|gvu|bench] [--config.KEY=VALUE ...]

Recipes: configs/synthetic.py (the embedded world; presets default, mini),
configs/janus_pro_1b.py, configs/janus_pro_7b.py (presets lora, t2i_r1, small)
and configs/xomni_en.py. Every key of a recipe is a --config.KEY=VALUE flag:
--print_config prints the resolved config (recipe, preset and overrides) and
exits, so `--config=configs/synthetic.py --print_config` lists them all.

mode=bench times the model and the GvU step (gvu_jax/tools/bench.py).
A converted checkpoint (configs/janus_*.py) runs mode=gvu, or mode=eval: images
of its prompts for the benchmarks' scorers (gvu_jax/evaluation/benchmark_images.py) and,
with eval.understanding, POPE / MME / SEED-Bench scores of its understanding
branch (gvu_jax/evaluation/understanding.py).
mode=all (the default) runs pretrain -> eval -> gvu -> eval and writes
WORKDIR/report.json; each stage resumes from, or skips to, what WORKDIR holds.
mode=pretrain and mode=gvu train one stage; mode=eval evaluates the finished
pretraining checkpoint and, if there is one, the latest GvU policy.
"""

import os
import re
import sys
import traceback

import numpy as np
import PIL.Image

from absl import app, flags
from ml_collections import config_flags

from gvu_jax.evaluation import benchmark_images, evaluate, understanding
from gvu_jax.infra import cli as cli_lib, files, grid, hosts, metrics, preemption, provenance
from gvu_jax.infra.errors import InputError, NonFiniteError
from gvu_jax.stages import config_check, context, gvu, pretrain, report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (every "
                                  "key a --config.KEY=VALUE flag sets) and exit.")

def check_workdir(workdir):
  if not workdir:
    raise InputError("--workdir is required")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--workdir={workdir}: cannot create it ({e.strerror})") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise InputError(f"--workdir={workdir}: not writable")


def before_devices(config):
  """What must be chosen before jax picks its devices (the first call that asks for
  them creates every backend client, and reads these settings then)."""
  if config.mode == "bench":   # the GPU's memory is shared with PyTorch's side
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if config.get("bench") and config.bench.get("topology"):
      from gvu_jax.tools import topology
      topology.on_cpu()   # compiled for a TPU slice: this host's CPU is enough


def run(config, workdir):
  config_check.check(config)   # every value, before anything runs or is written
  hosts.WATCHDOG.start(hosts.watchdog_seconds(config.watchdog_s))
  check_workdir(workdir)
  if hosts.is_main():
    files.hold_workdir(workdir)   # one run at a time writes here
  if config.mode == "bench":
    from gvu_jax.tools import bench
    bench.run(config, workdir)
    return
  if config_check.runs_a_checkpoint(config):   # a converted checkpoint's recipe
    if not config.checkpoint:
      raise InputError("config.checkpoint is required: a directory written by "
                       "python -m gvu_jax.convert")
    if config.mode not in ("gvu", "eval"):
      raise InputError(f"config.mode={config.mode}: a converted checkpoint runs mode=gvu, "
                       "or mode=eval (images for the benchmarks' own scorers)")
  ctx = context.create(config, workdir)   # an EmbeddedRun or a CheckpointRun
  hosts.connect(ctx.layout.mesh)   # (CPU processes) every device group, while hosts are together
  with ctx.layout.active():   # activation shardings apply to everything traced here
    if isinstance(ctx, context.CheckpointRun):
      run_checkpoint(ctx)
    else:
      run_embedded(ctx)


def run_checkpoint(ctx):
  """GvU on a converted checkpoint, or benchmark images of it and of its GvU policy."""
  provenance.check_stages(ctx.config, ctx.path, ["gvu"], ctx.source)   # before anything runs
  if ctx.config.mode == "eval":
    prompts, suites = benchmark_images.read_prompts(ctx), understanding.prepare(ctx)
  graphdef, base = ctx.load_base()
  if ctx.config.mode == "gvu":
    gvu.run(ctx, base)
    plotted(ctx, ctx.config.gvu.steps)
    return
  policy = gvu.load(ctx, base)   # the latest GvU policy in the workdir, if any
  stages = [("base", graphdef, base)] + ([("gvu", *policy)] if policy else [])
  benchmark_images.run(ctx, stages, prompts)
  if suites:
    understanding.run(ctx, stages, suites)


def run_embedded(ctx):
  """The embedded world: pretrain, GvU and their evaluations, as `mode` says."""
  mode = ctx.config.mode
  provenance.check_stages(ctx.config, ctx.path,   # every stage, before any runs
                          ["pretrain"] if mode == "pretrain" else ["pretrain", "gvu"], ctx.source)
  if mode == "pretrain":
    pretrain.run(ctx)
    return
  if mode == "gvu":
    gvu.run(ctx, pretrain.load(ctx)[1])
    return
  # a prompt file or dataset of world prompts, judged (read before anything runs)
  prompts = benchmark_images.read_prompts(ctx) if ctx.config.eval.prompts else None
  # all: train what is missing, evaluating each stage; eval: evaluate what is there.
  graphdef, params = (pretrain.run if mode == "all" else pretrain.load)(ctx)
  evaluated(ctx, "pretrained", evaluate.run(ctx, graphdef, params, "pretrained"), 0)
  policy = gvu.run(ctx, params) if mode == "all" else gvu.load(ctx, params)
  if policy is not None:
    evaluated(ctx, "gvu", evaluate.run(ctx, *policy, "gvu"), ctx.config.gvu.steps)
  report.show(ctx)
  plotted(ctx, ctx.config.gvu.steps if policy is not None else 0)
  if prompts:
    stages = [("pretrained", graphdef, params)] + ([("gvu", *policy)] if policy else [])
    benchmark_images.run(ctx, stages, prompts)


def evaluated(ctx, stage, result, step):
  """A stage's evaluation into report.json and, as "eval/<part>/<category>" at
  `step` (0 before GvU, gvu.steps after) with its grid, into the metric writers."""
  report.add_stage(ctx, stage, result)
  writer = metrics.stage_writer(ctx.config, ctx.workdir, "eval", resume_step=step - 1)
  writer.write(step, {f"{part}/{key}": value for part, values in result.items()
                      for key, value in (values.items() if isinstance(values, dict)
                                         else [("mean", values)])})
  if hosts.is_main():
    picture = read_picture(ctx.path("grids", f"{stage}.png"))
    writer.image(step, "grid", picture)
    if stage == "gvu" and os.path.exists(ctx.path("grids", "pretrained.png")):
      # the same held-out prompts and seeds (a key per prompt) before and after GvU
      writer.image(step, "before_after", grid.side_by_side(
          ctx.path("grids", "before_after.png"), read_picture(ctx.path("grids", "pretrained.png")),
          picture))
  writer.close()


def plotted(ctx, step):
  """report.png (the evaluations and GvU's curves), also to the metric writers."""
  picture = report.plot(ctx)
  if picture is not None:
    writer = metrics.stage_writer(ctx.config, ctx.workdir, "eval", resume_step=step)
    writer.image(step, "report", picture)
    writer.close()


def read_picture(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def parse_flags(argv):
  """absl flag parsing whose failures (unknown flag or config key, bad preset,
  bad value) end the program with one line naming the problem."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parse failure is the user's input
    print(f"error: {describe_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


def describe_flag_error(error, argv):
  lines = [l.strip() for l in str(error).replace("\\n", "\n").splitlines() if l.strip()]
  message = lines[-1] if lines else type(error).__name__
  unknown = re.search(r"Did you mean \"(\w+)\" instead of \"(\w+)\"", str(error))
  missing = re.match(r"^'?\\?'?(\w+)", str(error).strip("'\"\\")) if isinstance(
      error, (KeyError, AttributeError)) else None
  key = unknown.group(2) if unknown else (missing.group(1) if missing else None)
  if key:
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and a.split("=")[0].split(".")[-1] == key), f"config key {key!r}")
    hint = f' (did you mean "{unknown.group(1)}"?)' if unknown else ""
    return f"{flag}: unknown config key {key!r}{hint}"
  return re.sub(r"^\w+(Error|Exception): ", "", message)


def load_config():
  if not flags.FLAGS["config"].present:
    raise InputError("--config is required, e.g. --config=configs/synthetic.py")
  path = flags.FLAGS["config"].config_filename.split(":")[0]   # drop ":preset"
  if not os.path.isfile(path):
    raise InputError(f"--config={path}: no such config file")
  return _CONFIG.value


def main(argv):
  cli_lib.start(argv)
  if _PRINT_CONFIG.value:
    try:
      print(load_config(), end="")
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    return
  try:
    hosts.initialize()             # several hosts: before anything touches a device
    config = load_config()
    before_devices(config)
    with preemption.watching():    # SIGTERM: finish the step, checkpoint, exit 0
      run(config, _WORKDIR.value)
  except preemption.Preempted as e:
    print(str(e))
    sys.exit(0)
  except (InputError, NonFiniteError) as e:   # one line, no traceback
    # The same line on every host. It leaves without interpreter shutdown: after a
    # failed read TensorStore still has callbacks for Orbax's closed event loop,
    # whose tracebacks would follow the line. Nothing is left to write here
    # (stores are closed before these errors).
    hosts.end(hosts.from_this_host(str(e)), 2)
  except Exception as e:  # noqa: BLE001 - a fault: its traceback here, one line on the others
    if hosts.count() == 1:
      raise
    traceback.print_exc()
    hosts.end(hosts.from_this_host(f"{type(e).__name__}: {first_line(e)} (its traceback is "
                                   "in this host's log)"), 1)
  finally:
    files.release_workdirs()


def first_line(error):
  return (str(error).strip().splitlines() or [""])[0][:300]


def cli():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
