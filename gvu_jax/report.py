"""WORKDIR/report.json: per evaluated stage, generation and understanding
accuracies in [0, 1] (the contract other tools read), and a markdown table."""

import json
import os

from gvu_jax import files, metrics


def add_stage(ctx, stage, result):
  path = ctx.path("report.json")
  report = {}
  if os.path.exists(path):
    with open(path) as f:
      report = json.load(f)
  report[stage] = result
  order = {"pretrained": 0, "gvu": 1}
  report = dict(sorted(report.items(), key=lambda kv: order.get(kv[0], len(order))))
  if metrics.is_main_host():
    files.write_atomic(path, json.dumps(report, indent=2))   # never a half-written report


def markdown(report):
  stages = list(report)
  parts = ["generation", "understanding"] + [
      part for part in ("generation_gvu_prompts", "reward_ranking", "reward_ranking_gvu_prompts")
      if all(part in report[s] for s in stages)]
  rows = [(part, k) for part in parts for k in report[stages[0]][part]]
  lines = ["| | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
  for part, key in rows:
    cells = [f"{report[s][part].get(key, float('nan')):.3f}" for s in stages]
    lines.append(f"| {part} {key} | " + " | ".join(cells) + " |")
  if all("intrinsic_reward" in report[s] for s in stages):
    lines.append("| mean intrinsic reward | " +
                 " | ".join(f"{report[s]['intrinsic_reward']:.4f}" for s in stages) + " |")
  return "\n".join(lines)


def show(ctx):
  with open(ctx.path("report.json")) as f:
    table = markdown(json.load(f))
  if metrics.is_main_host():
    print(table)
    files.write_atomic(ctx.path("report.md"), table + "\n")
