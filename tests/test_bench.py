"""mode=bench on a converted Janus checkpoint."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gvu_jax.infra.errors import InputError  # noqa: E402
from gvu_jax.stages import config_check  # noqa: E402
from helpers_run import recipe_config  # noqa: E402
from helpers_janus import ROOT  # noqa: E402


def _bench_config(converted, preset="small", **bench):
  c = recipe_config("janus_pro_1b", preset)
  c.update(checkpoint=str(converted["transformers"]), random_init=False)
  c.bench.update(sampler_batches=(2,), vq_images=2, reward_images=2, reward_answer_tokens=3,
                 reference_forwards=0, repeats=1, **bench)
  c.gvu.update(prompts_per_step=2, group_size=4)
  return c


def test_device_check_dry_run_on_a_converted_checkpoint(converted, tmp_path, capsys):
  """configs/janus_pro_1b.py:device_check at tiny shapes on CPU (no timing asserts):
  every section measured, transformers and the PyTorch reference loop timed
  beside ours, the reward's one pass equal to the reference algorithm, and the
  attention kernel the device picks compared with XLA."""
  from gvu_jax.tools import bench
  c = _bench_config(converted, "device_check")
  assert c.model_options.dtype == "bfloat16" and c.model_options.attention == "auto"
  r = bench.run(c, str(tmp_path))
  assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(r))
  s = r["sampler"]["2"]
  assert s["rows"] == 4 and s["seconds"] > 0 and s["speedup_vs_transformers"] > 0
  assert r["sampler_speedup_vs_transformers"] == s["speedup_vs_transformers"]
  w = r["reward"]
  assert w["reference_forwards"] == w["reference_forwards_timed"] == 6
  assert w["max_abs_diff_vs_reference"] < 5e-3   # bfloat16: one pass and L passes round apart
  assert r["reward_speedup_vs_reference"] == w["speedup_vs_reference"] > 0
  g = r["grpo"]
  assert g["lora"] and g["rows"] == 8 and 0 < g["mfu"] and g["model_tflop"] > 0
  assert all(x["peak_bytes"] > 0 for x in (s, w, g, r["vq_decode"]))
  a = r["attention_check"]   # on CPU `auto` is XLA itself
  assert a["kernel"] == "xla" and a["max_abs_diff_vs_xla"] == 0.0 and a["rows"] == 8
  step, ref = r["step"], r["step"]["reference"]
  assert step["rows"] == ref["rows"] == 8
  assert set(step["phases"]) == set(ref["phases"]) == {"sample", "decode", "reward", "update"}
  assert step["seconds"] == pytest.approx(sum(step["phases"].values()))
  assert r["step_speedup_vs_reference"] == ref["seconds"] / step["seconds"] > 0
  out = capsys.readouterr().out
  assert "| sampler (2), 2 prompts x G=1, CFG 5, 4 rows |" in out
  assert "| GvU step, 8 images |" in out and "x the reference loop" in out


def test_bench_analysis_only_compiles_without_running(converted, tmp_path):
  from gvu_jax.tools import bench, costs
  c = _bench_config(converted, analysis_only=True)
  c.bench.machine = "h100"
  r = bench.run(c, str(tmp_path))
  rollout = r["sampler"]["rollout"]      # the recipe's GvU rollout: 2 prompts x G=4
  assert (rollout["prompts"], rollout["group_size"], rollout["rows"]) == (2, 4, 8)
  assert "seconds" not in rollout and rollout["peak_bytes"] > 0
  assert r["largest_peak_bytes"] == max(
      x["peak_bytes"] for x in (rollout, r["vq_decode"], r["reward"], r["ref_logp"], r["grpo"]))
  # on paper: the rollout reads weights + KV cache image_tokens times at 3.35 TB/s
  e, m = r["estimate"], bench.model_block(c)
  weights, kv, _ = costs.sampler_step_bytes(m, 8, c.bench.prompt_tokens)
  assert r["mesh"] == "data=1 fsdp=1 tensor=1" and e["chips"] == 1
  assert e["rollout_s"] == pytest.approx(m.image_tokens * (weights + kv) / 3350e9)
  assert e["step_s"] == pytest.approx(e["rollout_s"] + e["reward_s"] + e["update_s"])
  assert e["images_per_s"] == pytest.approx(8 / e["step_s"]) and e["fits"]
  c.bench.machine = "tpu9"
  with pytest.raises(InputError, match=r"bench.machine='tpu9': expected one of "
                                       r"\['', 'v4', 'v5e', 'v5p', 'v6e', 'h100'"):
    config_check.check(c)


@pytest.mark.slow
def test_bench_needs_janus_weights(converted, tmp_path):
  from gvu_jax.tools import bench
  c = _bench_config(converted)
  c.update(checkpoint="", random_init=False)
  with pytest.raises(InputError, match="mode=bench needs weights: --config.random_init=True"):
    bench.run(c, str(tmp_path))
  synthetic = subprocess.run(
      [sys.executable, "-m", "gvu_jax.main", "--config=configs/synthetic.py:mini",
       "--config.mode=bench", "--config.bench.analysis_only=False", f"--workdir={tmp_path}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert synthetic.returncode == 2
  assert synthetic.stderr.strip().splitlines()[-1].startswith(
      "error: mode=bench on the embedded world compiles only: set "
      "--config.bench.analysis_only=True or --config.bench.topology=SLICE")
