"""The claim, measured: GvU on the embedded world over several seeds, with the
shuffled-reward control, each run through the real command line.

  python -m gvu_jax.claim --workdir=/tmp/gvu_claim [--seeds=0,1,2] [--config=configs/synthetic.py]
      [--ceiling]

For each seed: `gvu_jax.main` (pretrain -> eval -> GvU -> eval), then the control
(`--config.reward.kind=shuffled`, rewards permuted within each group) starting
from the same pretrained checkpoint, and with --ceiling the same GvU stage with
the world's judge as the reward (`--config.reward.kind=judge`): what a perfect
reward gets. Writes WORKDIR/claim.json and claim.md.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so importing this module beside
  gvu_jax.main (which has --workdir and --config too) never clashes."""
  flags.DEFINE_string("workdir", None, "Where the runs and the summary go.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
  flags.DEFINE_string("config", "configs/synthetic.py", "Recipe[:preset].")
  flags.DEFINE_multi_string("override", [], "Extra --config.k=v for every run.")
  flags.DEFINE_bool("ceiling", False, "Also run GvU with the judge as the reward.")


def run_main(workdir, seed, extra):
  cmd = [sys.executable, "-m", "gvu_jax.main", f"--config={FLAGS.config}",
         f"--workdir={workdir}", f"--config.seed={seed}", *extra,
         *[f"--config.{o}" for o in FLAGS.override]]
  print("+", " ".join(cmd), flush=True)
  tic = time.perf_counter()
  subprocess.run(cmd, check=True)
  with open(os.path.join(workdir, "report.json")) as f:
    return json.load(f), time.perf_counter() - tic


def summarize(runs):
  """Per metric: the values over seeds, their mean and std."""
  keys = {"generation before": ("main", "pretrained", "generation"),
          "generation after GvU": ("main", "gvu", "generation"),
          "generation after shuffled control": ("control", "gvu", "generation"),
          "understanding before": ("main", "pretrained", "understanding"),
          "understanding after GvU": ("main", "gvu", "understanding"),
          "understanding after shuffled control": ("control", "gvu", "understanding")}
  ceiling = all("ceiling" in r for r in runs)
  if ceiling:
    keys["generation after judge ceiling"] = ("ceiling", "gvu", "generation")
  if all("generation_gvu_prompts" in r["main"]["gvu"] for r in runs):
    keys["generation on GvU prompts before"] = ("main", "pretrained", "generation_gvu_prompts")
    keys["generation on GvU prompts after GvU"] = ("main", "gvu", "generation_gvu_prompts")
    keys["generation on GvU prompts after control"] = ("control", "gvu",
                                                       "generation_gvu_prompts")
    if ceiling:
      keys["generation on GvU prompts after judge ceiling"] = ("ceiling", "gvu",
                                                               "generation_gvu_prompts")
  out = {}
  for name, (run, stage, part) in keys.items():
    values = [r[run][stage][part]["overall"] for r in runs]
    out[name] = {"per_seed": values, "mean": float(np.mean(values)),
                 "std": float(np.std(values))}
  changes = {"generation gain (points)": ("main", "generation"),
             "control gain (points)": ("control", "generation"),
             "understanding change (points)": ("main", "understanding")}
  if ceiling:
    changes["ceiling gain (points)"] = ("ceiling", "generation")
  if "generation on GvU prompts before" in keys:
    changes["GvU-prompt gain (points)"] = ("main", "generation_gvu_prompts")
    changes["GvU-prompt control gain (points)"] = ("control", "generation_gvu_prompts")
    if ceiling:
      changes["GvU-prompt ceiling gain (points)"] = ("ceiling", "generation_gvu_prompts")
  for name, (run, part) in changes.items():
    values = [100 * (r[run]["gvu"][part]["overall"] - r[run]["pretrained"][part]["overall"])
              for r in runs]
    out[name] = {"per_seed": values, "mean": float(np.mean(values)),
                 "std": float(np.std(values))}
  return out


def markdown(summary, seeds):
  lines = ["| metric (overall; held-out unless named) | " + " | ".join(f"seed {s}" for s in seeds) +
           " | mean ± std |", "|---" * (len(seeds) + 2) + "|"]
  for name, v in summary.items():
    cells = " | ".join(f"{x:.3f}" if "points" not in name else f"{x:+.1f}" for x in v["per_seed"])
    fmt = "{:.1f}" if "points" in name else "{:.3f}"
    lines.append(f"| {name} | {cells} | {fmt.format(v['mean'])} ± {fmt.format(v['std'])} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  runs = []
  for seed in FLAGS.seeds:
    main_dir = os.path.join(FLAGS.workdir, f"seed_{seed}")
    report, seconds = run_main(main_dir, seed, [])
    runs.append({"seed": seed, "main": report, "seconds": seconds})
    arms = [("control", "shuffled")] + ([("ceiling", "judge")] if FLAGS.ceiling else [])
    for arm, kind in arms:
      arm_dir = os.path.join(FLAGS.workdir, f"seed_{seed}_{kind}")
      if not os.path.exists(os.path.join(arm_dir, "pretrain")):   # same start as the main run
        shutil.copytree(os.path.join(main_dir, "pretrain"), os.path.join(arm_dir, "pretrain"))
      runs[-1][arm], runs[-1][f"{arm}_seconds"] = run_main(arm_dir, seed,
                                                           [f"--config.reward.kind={kind}"])
  summary = summarize(runs)
  table = markdown(summary, FLAGS.seeds)
  with open(os.path.join(FLAGS.workdir, "claim.json"), "w") as f:
    json.dump({"summary": summary, "runs": runs}, f, indent=2)
  with open(os.path.join(FLAGS.workdir, "claim.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  print("wall time per main run (s):", [round(r["seconds"]) for r in runs])


def cli():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
