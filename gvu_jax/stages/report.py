"""WORKDIR/report.json: per evaluated stage, generation and understanding
accuracies in [0, 1] (the contract other tools read), a markdown table, and
report.png: accuracy per category before and after GvU, and GvU's reward, KL
and entropy over its steps."""

import json
import os

import numpy as np
import PIL.Image

from gvu_jax.infra import files, hosts


def read(ctx):
  """report.json as a dict ({} before the first evaluation)."""
  if not os.path.exists(ctx.path("report.json")):
    return {}
  with open(ctx.path("report.json")) as f:
    return json.load(f)


def add_stage(ctx, stage, result):
  path = ctx.path("report.json")
  report = read(ctx)
  report[stage] = result
  order = {"pretrained": 0, "gvu": 1}
  report = dict(sorted(report.items(), key=lambda kv: order.get(kv[0], len(order))))
  if hosts.is_main():
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
  table = markdown(read(ctx))
  if hosts.is_main():
    print(table)
    files.write_atomic(ctx.path("report.md"), table + "\n")


CURVES = (("reward_mean", "mean intrinsic reward"), ("kl", "KL to the reference"),
          ("entropy", "token entropy"))


def plot(ctx):
  """report.png from report.json and gvu/metrics.jsonl (what of them exists; host
  0) -> uint8 [H, W, 3], or None when there is nothing to plot."""
  if not hosts.is_main():
    return None
  import matplotlib
  matplotlib.use("Agg")   # files only, no display
  from matplotlib import pyplot as plt
  report = read(ctx)
  rows = files.read_jsonl(ctx.path("gvu", "metrics.jsonl"))
  parts = [p for p in ("generation", "understanding") if any(p in s for s in report.values())]
  if not parts and not rows:
    return None
  fig = plt.figure(figsize=(12, 3.4 * (bool(parts) + bool(rows))), dpi=100)
  grid = fig.add_gridspec(bool(parts) + bool(rows), 6)   # 6 = 2 or 3 panels a row
  for i, part in enumerate(parts):
    span = 6 // len(parts)
    ax = fig.add_subplot(grid[0, i * span:(i + 1) * span])
    keys = list(next(s for s in report.values() if part in s)[part])
    width = 0.8 / len(report)
    for j, (stage, result) in enumerate(report.items()):
      ax.bar([x + j * width for x in range(len(keys))],
             [result.get(part, {}).get(k, 0.0) for k in keys], width, label=stage)
    ax.set_xticks([x + width * (len(report) - 1) / 2 for x in range(len(keys))],
                  [k.replace("_", " ") for k in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"{part} accuracy, held-out prompts")
    ax.legend(loc="upper right", fontsize="small")
  if rows:
    steps = [r["step"] for r in rows]
    for i, (key, title) in enumerate(CURVES):
      ax = fig.add_subplot(grid[int(bool(parts)), 2 * i:2 * i + 2])
      ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker=".")
      ax.set_title(title)
      ax.set_xlabel("GvU step")
  fig.tight_layout()
  fig.canvas.draw()
  picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  PIL.Image.fromarray(picture).save(ctx.path("report.png"))
  return picture
