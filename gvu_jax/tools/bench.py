"""Benchmarks at real shapes: the sampler, VQ decode, the reward and the GRPO
update, with XLA's cost and memory analysis, beside transformers when installed.

  python -m gvu_jax.main --config=configs/janus_pro_1b.py:small --config.mode=bench \
      --workdir=/tmp/bench                      # CPU-sized (78 M parameters)
  python -m gvu_jax.main --config=configs/janus_pro_1b.py:t2i_r1 --config.mode=bench \
      --config.random_init=True --config.model_options.attention=auto --workdir=DIR
  python -m gvu_jax.main --config=configs/janus_pro_7b.py:lora --config.mode=bench \
      --config.random_init=True --config.gvu.group_size=8 \
      --config.bench.analysis_only=True --workdir=DIR   # compile only: does it fit?
  XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m gvu_jax.main \
      --config=configs/janus_pro_7b.py:lora --config.mode=bench --config.random_init=True \
      --config.bench.analysis_only=True --config.mesh.fsdp=32 --config.mesh.tensor=2 \
      --config.bench.machine=v5e --workdir=DIR     # a v5e-64 on paper (docs/scaling.md)

Weights are random (`random_init=True`, the shapes of `expect_model`) or a
converted checkpoint (`checkpoint=DIR`). Prints a table, writes WORKDIR/bench.json.

  sampler    ms per image-token step and images/s for B prompts with CFG (2B rows),
             prefill included. roofline = (bytes each step must move: the weights
             in the compute dtype + the KV cache of the tokens so far) / (measured
             copy bandwidth) / (measured step time).
  vq_decode  seconds to decode `vq_images` images.
  reward     the intrinsic reward (vision encoder + ONE decoder pass), against one
             plain decoder pass of the same length and against the reference
             algorithm: one pass per answer token, one image at a time (timed on
             `reference_forwards` of the images x tokens passes, scaled to all).
  grpo       one update of the recipe's GvU step (gvu block: LoRA or full, G, remat).
             MFU = analytic model FLOPs / time / device peak; model FLOPs count
             the matmuls and attention of the forward pass (QK and PV over the full
             square) times 3 for full fine-tuning (forward + two backward matmuls)
             or 2 for LoRA (the base weights get no gradient). XLA's own count
             (`hlo_tflop`, remat recompute included) is reported beside it.
  memory     peak bytes of each compiled function (`memory_analysis()`: arguments +
             outputs + temporaries - donated), and an analytic model for the sampler
             (weights + full KV cache) and the GRPO step (tools/costs.py). XLA's
             CPU backend does not reuse per-layer temporaries the way the GPU and TPU
             schedulers do, so on CPU its figure for a training step is far above
             what an accelerator needs; use the model there.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gvu_jax.infra import files, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models import build, presets
from gvu_jax.rl.sampling import SamplingConfig, in_compute_dtype
from gvu_jax.stages import config_check
from gvu_jax.tools import costs, programs, topology



# --- The model ---------------------------------------------------------------------

def model_block(config):
  """The `model` block: the checkpoint's, the preset `expect_model` (random_init, or
  a compile-only bench: shapes are all it needs), or the embedded world's own (its
  programs are compiled, not timed)."""
  if not config_check.runs_a_checkpoint(config):
    if not compile_only(config):
      raise InputError("mode=bench on the embedded world compiles only: set "
                       "--config.bench.analysis_only=True or --config.bench.topology=SLICE "
                       "(timing runs on a Janus recipe, configs/janus_pro_*.py)")
    return config.model.copy_and_resolve_references()
  if config.checkpoint:
    from gvu_jax.interop import convert
    m = convert.read_converted_config(config.checkpoint)
  elif config.get("random_init") or compile_only(config):   # compiling needs shapes only
    m = presets.preset(config.expect_model)
  else:
    raise InputError("mode=bench needs weights: --config.random_init=True (random weights "
                     "of expect_model's shapes) or --config.checkpoint=DIR")
  if m.family != "janus":
    raise InputError(f"mode=bench times Janus models; {m.family} is not benchmarked yet")
  m.update(dict(config.model_options))
  return m


def compile_only(config):
  return bool(config.bench.analysis_only or config.bench.get("topology"))


def base_params(config, m, abstract):
  """The frozen base weights, as a run holds them: a checkpoint in its stored dtype,
  random weights in the compute dtype (as `convert --dtype` stores them)."""
  dtype = jnp.dtype(m.dtype)
  if config.get("checkpoint"):
    from gvu_jax.interop import convert
    if abstract:   # shapes and the stored dtype; no weight is read
      dtype = convert.DTYPES[convert.stored_dtype(config.checkpoint)]
    else:
      return jax.tree.map(jnp.asarray, convert.load(config.checkpoint, like_model=m)[1])
  if abstract:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), build.abstract(m)[1])
  return jax.jit(lambda: jax.tree.map(lambda x: x.astype(dtype),
                                      build.create(m, config.seed)[1]))()


# --- The run -----------------------------------------------------------------------

def measure(report, config, m, graphdef, params, sampler_params, abstract, rng, layout, log):
  """The four measurements, into `report`."""
  b, c = config.bench, config.gvu
  log("sampler")
  if abstract:   # the recipe's own rollout: prompts_per_step x G samples, its sampling
    report["sampler"] = {"rollout": programs.bench_sampler(
        graphdef, sampler_params, m, b, c.prompts_per_step, c.group_size,
        SamplingConfig(**c.sampling), abstract, rng, layout)}
  else:
    report["sampler"] = {str(n): programs.bench_sampler(
        graphdef, sampler_params, m, b, n, 1, SamplingConfig(cfg_weight=b.cfg_weight),
        abstract, rng, layout) for n in b.sampler_batches}
  rollout = c.prompts_per_step * c.group_size   # compile only: the step's own images
  log("VQ decode")
  report["vq_decode"] = programs.bench_vq(graphdef, sampler_params, m,
                                          rollout if abstract else b.vq_images, b, abstract,
                                          rng, layout)
  log("reward and the reference algorithm")
  report["reward"] = programs.bench_reward(graphdef, sampler_params, m, b,
                                           rollout if abstract else b.reward_images, abstract,
                                           rng, layout)
  log("reference log-probs and the GRPO step")
  report["grpo"], report["ref_logp"], update = programs.bench_grpo(config, m, params, abstract,
                                                                   rng, layout)
  if not abstract:
    log("attention kernel against XLA")
    report["attention_check"] = programs.bench_attention(m, b, c.prompts_per_step * c.group_size,
                                                         rng)
    log("one whole GvU step")
    report["step"] = programs.bench_step(config, m, params, rng, layout, update)


def run(config, workdir):
  start = time.perf_counter()
  log = lambda what: print(f"bench: {what} ({time.perf_counter() - start:.0f} s)", flush=True)
  m = model_block(config)
  b = config.bench
  abstract = compile_only(config)
  slice_devices = topology.devices(b.topology) if b.get("topology") else None
  rng = np.random.default_rng(config.seed)
  layout = (sharding.Layout.from_config(config, slice_devices) if "mesh" in config
            else sharding.single_device())
  params = programs.place(layout, base_params(config, m, abstract), abstract)
  graphdef, _ = build.abstract(m)
  device = layout.mesh.devices.flat[0]
  dtype = jnp.dtype(m.dtype)
  report = {"device": str(device), "device_kind": device.device_kind,
            "backend": device.platform, "jax": jax.__version__,
            "model": config.get("checkpoint") or config.get("expect_model") or "embedded world",
            "params": costs.count(params), "dtype": m.dtype,
            "attention": m.get("attention", "xla"),
            "remat": bool(m.remat), "analysis_only": abstract, "mesh": layout.describe(),
            "frozen_bytes_per_device": topology.bytes_per_device(params)}
  if not abstract:
    report["copy_GBps"] = programs.copy_bandwidth_GBps(dtype)
    report["matmul_tflops"] = programs.matmul_tflops(dtype)
  # The sampler, VQ and reward read the weights in the compute dtype (a LoRA policy
  # would add its adapters; they are 0.1% of the bytes).
  to_compute = lambda p: in_compute_dtype(p, graphdef)
  sampler_params = programs.place(layout, jax.eval_shape(to_compute, params) if abstract else
                                  jax.jit(to_compute)(params), abstract)
  with layout.active(), topology.compiling_for(slice_devices):
    measure(report, config, m, graphdef, params, sampler_params, abstract, rng, layout, log)
  if not abstract:
    for s in report["sampler"].values():
      s["roofline"] = s["bytes_per_step"] / (report["copy_GBps"] * 1e9) / (
          s["ms_per_step"] / 1000)
    g = report["grpo"]
    peak, source = programs.peak_tflops(device, report["matmul_tflops"])
    g.update(model_tflops=g["model_tflop"] / g["seconds"], peak_tflops=peak, peak_source=source)
    g["mfu"] = g["model_tflops"] / peak
    report["reward_speedup_vs_reference"] = report["reward"]["speedup_vs_reference"]
    log("transformers sampler")
    theirs = programs.transformers_sampler(m, b, b.sampler_batches) if b.transformers else None
    if theirs:
      for n, t in theirs.items():
        s = report["sampler"][str(n)]
        s.update(transformers_seconds=t, transformers_ms_per_step=1000 * t / m.image_tokens,
                 speedup_vs_transformers=t / s["seconds"])
      report["sampler_speedup_vs_transformers"] = report["sampler"][
          str(b.sampler_batches[-1])]["speedup_vs_transformers"]
    log("the reference loop's GvU step (PyTorch)")
    step = report["step"]
    step["reference"] = programs.reference_step(config, m) if b.transformers else None
    if step["reference"]:
      report["step_speedup_vs_reference"] = step["reference"]["seconds"] / step["seconds"]
  if abstract and b.get("machine"):
    report["estimate"] = costs.estimate(report, m, b.prompt_tokens, b.machine)
  peaks = [x["peak_bytes"] for x in (*report["sampler"].values(), report["vq_decode"],
                                     report["reward"], report["ref_logp"], report["grpo"])
           if x["peak_bytes"]]
  report["largest_peak_bytes"] = max(peaks) if peaks else None
  if slice_devices:
    report.update(topology.summary(report, b.topology, slice_devices))

  files.write_atomic(os.path.join(workdir, "bench.json"), json.dumps(report, indent=1))
  print(topology.table(report) if slice_devices else table(report))
  return report


def table(r):
  """The report as a markdown table."""
  gb = lambda x: "-" if x is None else f"{x / 2**30:.2f} GiB"
  num = lambda x, fmt: "-" if x is None else format(x, fmt)
  lines = [f"bench: {r['model']} ({r['params'] / 1e6:.0f} M params, {r['dtype']}, "
           f"attention {r['attention']}) on {r['device_kind']}, mesh {r['mesh']}"
           " (memory per device)"
           + ("" if r["analysis_only"] else
              f"; copy {r['copy_GBps']:.0f} GB/s, matmul {r['matmul_tflops']:.2f} TFLOP/s"),
           "", "| what | time | rate | vs | memory: XLA analysis (analytic model) |",
           "|---|---|---|---|---|"]
  for n, s in r["sampler"].items():
    rate = (f"{s['ms_per_step']:.2f} ms/step, {s['images_per_s']:.2f} img/s, "
            f"{s['roofline']:.0%} of roofline") if "seconds" in s else "-"
    vs = (f"{s['speedup_vs_transformers']:.2f}x transformers "
          f"({s['transformers_ms_per_step']:.2f} ms/step)") if "transformers_seconds" in s else "-"
    what = f"{s['prompts']} prompts x G={s['group_size']}, CFG {s['cfg_weight']:g}"
    lines.append(f"| sampler ({n}), {what}, {s['rows']} rows | {num(s.get('seconds'), '.3f')} s"
                 f" | {rate} | {vs} | {gb(s['peak_bytes'])} ({gb(s['model_bytes'])}) |")
  v = r["vq_decode"]
  lines.append(f"| VQ decode, {v['images']} images | {num(v.get('seconds'), '.3f')} s | - | - "
               f"| {gb(v['peak_bytes'])} |")
  w = r["reward"]
  vs = (f"{w['vs_forward']:.2f}x one forward ({w['forward_seconds']:.3f} s); "
        f"{w['speedup_vs_reference']:.1f}x faster than the reference "
        f"({w['reference_seconds']:.2f} s)") if "seconds" in w else "-"
  lines.append(f"| reward, {w['images']} images x {w['length']} tokens | "
               f"{num(w.get('seconds'), '.3f')} s | - | {vs} | {gb(w['peak_bytes'])} |")
  g = r["grpo"]
  rate = (f"{g['model_tflops']:.3g} TFLOP/s, MFU {g['mfu']:.1%} of {g['peak_tflops']:.3g} "
          f"({g['peak_source']})") if "seconds" in g else "-"
  lines.append(f"| GRPO step, {g['rows']} rows x {g['length']} tokens, "
               f"{'LoRA' if g['lora'] else 'full'}{', remat' if g['remat'] else ''} | "
               f"{num(g.get('seconds'), '.3f')} s | {rate} | model {g['model_tflop']:.2f} "
               f"TFLOP, XLA {num(g['hlo_tflop'], '.2f')} TFLOP per device | {gb(g['peak_bytes'])} "
               f"({gb(g['model_bytes'])}; {gb(g['model_bytes_flash'])} with flash attention) |")
  a = r.get("attention_check")
  if a:
    lines.append(f"| attention: {a['kernel']} against XLA, {a['rows']} rows x {a['length']} "
                 f"tokens | {a['seconds'] * 1000:.2f} ms | - | XLA {a['xla_seconds'] * 1000:.2f} ms"
                 f"; max abs diff {a['max_abs_diff_vs_xla']:.2g} | - |")
  st = r.get("step")
  if st:
    split = lambda p: ", ".join(f"{k} {v:.2f}" for k, v in p.items())
    ref = st.get("reference")
    vs = (f"{r['step_speedup_vs_reference']:.2f}x the reference loop ({ref['seconds']:.2f} s: "
          f"{split(ref['phases'])})") if ref else "-"
    lines.append(f"| GvU step, {st['rows']} images | {st['seconds']:.3f} s | "
                 f"{split(st['phases'])} | {vs} | - |")
  e = r.get("estimate")
  if e:
    lines.append(f"\non paper, {e['chips']} {e['machine']} chips: rollout {e['rollout_s']:.2f} s + "
                 f"reward {e['reward_s']:.2f} s + update {e['update_s']:.2f} s = "
                 f"{e['step_s']:.2f} s per step, {e['images_per_s']:.1f} images/s; analytic "
                 f"memory {gb(e['analytic_peak_bytes'])} per chip "
                 f"({'fits' if e['fits'] else 'does NOT fit'})")
  return "\n".join(lines)
