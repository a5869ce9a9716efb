"""Compiling for a TPU slice from a host that does not own one (docs/scaling.md).

libtpu carries the TPU compiler: `devices("v5e:2x4")` are the devices of that slice,
a mesh is built over them, every program is lowered with abstract arguments sharded
over it and compiled, and the compiler's own memory and cost analyses say what each
chip holds and does. Nothing runs, so no time is measured: `roofline_s` is
max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) per chip from the compiler's counts,
an estimate (docs/scaling.md says how it compares with the analytic model).
"""

import contextlib
import importlib.util
import os
import re
import time

import jax
import numpy as np

from gvu_jax.infra import sharding
from gvu_jax.infra.accelerators import CHIPS, GiB
from gvu_jax.infra.errors import InputError
from gvu_jax.models import attention

EXAMPLES = "v4:2x2x1, v5e:2x2, v5e:2x4, v5e:16x16, v5p:2x2x1, v5p:4x4x8, v6e:2x4"
# A slice fits when each program, with the training state that stays on the chips
# beside it, needs at most this share of a chip's HBM (the rest: the runtime's own
# buffers, fragmentation, and a compiler that rounds differently on the real slice).
FIT_SHARE = 0.9


def on_cpu():
  """This process computes on its CPU only (set before jax picks its devices): a
  compile for a slice needs no local accelerator, and leaves one it finds alone."""
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")


def quiet_libtpu():
  """libtpu asks the cloud metadata server which TPU this host is when it loads; on
  a host that is not a TPU VM that is a screen of warnings. Where this process runs
  on CPU, names that say "no TPU here" before it loads. It also takes a lock file
  (/tmp/libtpu_lockfile) so that one process owns the TPU; a process that only
  compiles owns none, so several may load it at once (two compile checks, test
  workers)."""
  if jax.config.jax_platforms == "cpu":
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")


def devices(name):
  """The devices of the TPU slice `name` ("v5e:2x4"), or a one-line InputError."""
  if importlib.util.find_spec("libtpu") is None:
    raise InputError(f"bench.topology={name!r} needs the TPU compiler (libtpu): "
                     'pip install "gvu_jax[tpu]"')
  quiet_libtpu()
  from jax.experimental import topologies
  try:
    found = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
  except Exception as e:  # noqa: BLE001 - libtpu's error names the rule broken
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise InputError(f"bench.topology={name!r}: not a TPU slice libtpu knows ({reason}); "
                     f"names look like {EXAMPLES}") from None
  kind = found[0].device_kind
  if kind not in CHIPS:
    raise InputError(f"bench.topology={name!r}: {kind} has no chip figures in "
                     f"gvu_jax/tools/topology.py (known: {', '.join(CHIPS)})")
  return list(found)


def describe(found):
  """The slice's figures for bench.json: chips and what each holds and does."""
  chip = CHIPS[found[0].device_kind]
  chips = len({tuple(getattr(d, "coords", (d.id,))) for d in found})
  return {"device_kind": found[0].device_kind, "chip": chip.name, "chips": chips,
          "devices_per_chip": len(found) // chips, "hbm_bytes_per_chip": chip.hbm,
          "peak_flops_per_chip": chip.flops, "hbm_bytes_per_s_per_chip": chip.bandwidth}


@contextlib.contextmanager
def compiling_for(found):
  """Programs traced inside pick their kernels for the slice's platform (splash
  attention on TPU, compiled, not interpreted), not for this host's."""
  with attention.compiling_for(found[0].platform if found else None):
    yield


_BYTES = r"([\d.]+)\s*([KMGT]?)i?B?"
_SCALE = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OUT_OF_MEMORY = (   # (needed, available) in the compiler's words
    re.compile(rf"required for .*?\({_BYTES}\) exceeds available HBM \({_BYTES}\)"),
    re.compile(rf"Used {_BYTES} of {_BYTES} hbm"),
)


def out_of_memory(error):
  """(needed bytes, available bytes, the compiler's line) when `error` is the TPU
  compiler refusing a program for memory; None for any other error."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  line = next((l.strip() for l in text.splitlines() if "RESOURCE_EXHAUSTED" in l), text)
  for pattern in _OUT_OF_MEMORY:
    found = pattern.search(text)
    if found:
      need, need_unit, have, have_unit = found.groups()
      return (int(float(need) * _SCALE[need_unit]), int(float(have) * _SCALE[have_unit]), line)
  return None, None, line


def compile_program(compile_fn):
  """-> (the executable or None, its figures per device): peak bytes, FLOPs and
  bytes accessed (XLA's cost analysis) and compile seconds; where the compiler
  refuses the program for memory, the bytes it needed and had, and fits False."""
  tic = time.perf_counter()
  try:
    compiled = compile_fn()
  except Exception as e:  # noqa: BLE001 - only an out-of-memory refusal is a result
    refused = out_of_memory(e)
    if refused is None:
      raise
    needed, available, line = refused
    return None, {"compile_s": time.perf_counter() - tic, "fits": False, "peak_bytes": None,
                  "needed_bytes": needed, "available_bytes": available, "error": line}
  out = {"compile_s": time.perf_counter() - tic, "peak_bytes": sharding.peak_bytes(compiled)}
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  out["flops"] = float(cost.get("flops", 0.0)) or None
  out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0)) or None
  return compiled, out


def roofline(program, slice_):
  """Seconds one program takes at best on the slice: per chip, the larger of its
  FLOPs at peak and its bytes at HBM bandwidth."""
  per_chip = slice_["devices_per_chip"]
  return max((program.get("flops") or 0.0) * per_chip / slice_["peak_flops_per_chip"],
             (program.get("bytes_accessed") or 0.0) * per_chip
             / slice_["hbm_bytes_per_s_per_chip"])


def bytes_per_device(tree):
  """Bytes one device holds of a tree of (abstract or real) arrays on a mesh."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


PROGRAMS = ("rollout", "vq_decode", "reward", "ref_logp", "update")


def summary(report, name, found):
  """bench.json's slice figures from a compile-only bench report: per program
  (PROGRAMS, as a GvU step runs them) the peak bytes per chip, what stays on the
  chip beside it, whether both fit, FLOPs, bytes and roofline seconds; then the
  step's roofline (the update counted gvu.mu times) and whether every program fits."""
  slice_ = describe(found)
  per_chip = slice_["devices_per_chip"]
  g = report["grpo"]
  trainable, optimizer = g["trainable_bytes_per_device"], g["optimizer_bytes_per_device"]
  rollout = report["sampler"]["rollout"]
  # The training state stays on the chips through the step; a program that does not
  # take it as an argument has it beside it (and the rollout, reading weights gathered
  # over fsdp, has the sharded ones beside them too).
  beside = {"rollout": trainable + optimizer + (report["frozen_bytes_per_device"]
                                                if rollout["weights_gathered"] else 0),
            "vq_decode": trainable + optimizer, "reward": trainable + optimizer,
            "ref_logp": optimizer, "update": 0}
  sections = {"rollout": rollout, "vq_decode": report["vq_decode"], "reward": report["reward"],
              "ref_logp": report["ref_logp"], "update": g}
  budget = FIT_SHARE * slice_["hbm_bytes_per_chip"]
  programs = {}
  for program in PROGRAMS:
    s = sections[program]
    out = {"compile_s": s["compile_s"],
           "resident_beside_bytes_per_chip": beside[program] * per_chip}
    if s["peak_bytes"] is None:   # refused by the compiler
      out.update(peak_bytes_per_chip=None, fits=False, error=s["error"],
                 needed_bytes_per_device=s["needed_bytes"],
                 available_bytes_per_device=s["available_bytes"])
    else:
      out["peak_bytes_per_chip"] = s["peak_bytes"] * per_chip
      out.update(flops=s["flops"], bytes_accessed=s["bytes_accessed"],
                 roofline_s=roofline(s, slice_),
                 fits=out["peak_bytes_per_chip"] + out["resident_beside_bytes_per_chip"] <= budget)
    programs[program] = out
  times = [p.get("roofline_s") for p in programs.values()]
  step = None
  if all(t is not None for t in times):
    step = sum(times) + (g["mu"] - 1) * programs["update"]["roofline_s"]
  images = rollout["prompts"] * rollout["group_size"]
  return {"topology": name, **slice_, "fit_share": FIT_SHARE, "programs": programs,
          "step_roofline_s": step, "images_per_s_roofline": images / step if step else None,
          "fits": all(p["fits"] for p in programs.values())}


def _bytes(x):
  if x is None:
    return "-"
  return f"{x / GiB:.2f} GiB" if x >= GiB / 8 else f"{x / 2**20:.2f} MiB"


def _seconds(x):
  return f"{x:.3g} s" if x >= 1 else f"{x * 1e3:.3g} ms"


def table(r):
  """A compile-only report for a TPU slice as a markdown table."""
  gib = _bytes
  lines = [f"bench: {r['model']} ({r['params'] / 1e6:.0f} M params, {r['dtype']}) compiled for "
           f"{r['topology']}: {r['chips']} x {r['device_kind']} ({gib(r['hbm_bytes_per_chip'])} "
           f"HBM each), mesh {r['mesh']}", "",
           "| program | peak per chip | state beside it | fits | TFLOP per chip | "
           "GB accessed per chip | roofline | compile |", "|---|---|---|---|---|---|---|---|"]
  per_chip = r["devices_per_chip"]
  for name, p in r["programs"].items():
    beside = gib(p["resident_beside_bytes_per_chip"])
    if p["peak_bytes_per_chip"] is None:
      needed = p["needed_bytes_per_device"]
      lines.append(f"| {name} | refused: needs {gib(needed and needed * per_chip)} | {beside} "
                   f"| no | - | - | - | {p['compile_s']:.0f} s |")
      continue
    lines.append(f"| {name} | {gib(p['peak_bytes_per_chip'])} | {beside} | "
                 f"{'yes' if p['fits'] else 'no'} | {(p['flops'] or 0) * per_chip / 1e12:.3g} | "
                 f"{(p['bytes_accessed'] or 0) * per_chip / 1e9:.3g} | "
                 f"{_seconds(p['roofline_s'])} | {p['compile_s']:.0f} s |")
  step = r["step_roofline_s"]
  lines.append("")
  lines.append((f"step roofline {_seconds(step)}, {r['images_per_s_roofline']:.4g} images/s "
                "(a roofline estimate: nothing ran); " if step else "")
               + ("fits" if r["fits"] else "does NOT fit")
               + f" in {r['fit_share']:.0%} of each chip's HBM")
  for name, p in r["programs"].items():
    if p.get("error"):
      lines.append(f"{name}: {p['error']}")
  return "\n".join(lines)
