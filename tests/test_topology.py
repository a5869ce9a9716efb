"""Compiled for TPU slices from this CPU host: libtpu's compiler, no TPU, nothing runs
(gvu_jax/tools/topology.py, `mode=bench` with `bench.topology`)."""

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gvu_jax.infra.errors import InputError
from gvu_jax.tools import bench, topology
from helpers_run import REPO, last_line, main_command, main_env, recipe_config

GiB = 2**30
SLICES = {"v5e:2x2": ("TPU v5 lite", 4, 4, 16 * GiB), "v4:2x2x1": ("TPU v4", 4, 8, 32 * GiB)}


def _compiled_for(tmp_path, capsys, config, name):
  """bench.run for slice `name`: the report, checked against bench.json, the
  slice's vendor figures and the table it printed."""
  config.mode, config.bench.topology = "bench", name
  r = bench.run(config, str(tmp_path))
  assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(r))
  kind, chips, devices, hbm = SLICES[name]
  assert (r["topology"], r["device_kind"], r["chips"], r["hbm_bytes_per_chip"]) == (
      name, kind, chips, hbm)
  assert r["devices_per_chip"] * chips == devices and r["backend"] == "tpu"
  out = capsys.readouterr().out
  assert f"compiled for {name}: {chips} x {kind}" in out
  return r, out


def _check_programs(r, names):
  for name in names:
    p = r["programs"][name]
    assert 0 < p["peak_bytes_per_chip"] < r["hbm_bytes_per_chip"], name
    assert p["flops"] > 0 and p["bytes_accessed"] > 0 and p["compile_s"] > 0, name
    assert p["roofline_s"] == pytest.approx(topology.roofline(p, r)), name
    assert p["fits"], name


@pytest.mark.parametrize("name", SLICES)
def test_the_mini_gvu_step_compiles_for_a_tpu_slice(tmp_path, capsys, name):
  """Every program of the embedded world's GvU step, at the mini recipe's shapes,
  compiled for the slice: figures present, positive and under the chip's HBM; the
  step's roofline is the programs' sum (the update gvu.mu times)."""
  c = recipe_config("synthetic", "mini")
  r, out = _compiled_for(tmp_path, capsys, c, name)
  _check_programs(r, topology.PROGRAMS)
  programs = r["programs"]
  assert r["step_roofline_s"] == pytest.approx(sum(p["roofline_s"] for p in programs.values()))
  rows = c.gvu.prompts_per_step * c.gvu.group_size
  assert r["images_per_s_roofline"] == pytest.approx(rows / r["step_roofline_s"])
  assert r["fits"] and "fits in 90% of each chip's HBM" in out
  # The decode loop is counted step by step: N - 1 steps beside the one prefill.
  rollout = r["sampler"]["rollout"]
  assert rollout["flops"] > (c.model.image_tokens - 1) * rollout["step_flops"] > 0
  # The training state stays beside every program that does not take it.
  assert programs["update"]["resident_beside_bytes_per_chip"] == 0
  assert programs["rollout"]["resident_beside_bytes_per_chip"] > 0
  for name in topology.PROGRAMS:
    assert f"| {name} |" in out


@pytest.mark.parametrize("name", ["v5e:2x2"])
def test_a_janus_rollout_reward_and_update_compile_for_a_tpu_slice(tmp_path, capsys, name):
  """The `small` Janus preset (78 M parameters) with the kernels a TPU takes:
  splash attention (inside a shard_map: XLA cannot partition a Mosaic kernel).
  One slice: each takes minutes on CI's two cores; the mini step above covers v4."""
  c = recipe_config("janus_pro_7b", "small")
  c.model_options.attention = "auto"   # splash, for a TPU
  c.bench.update(prompt_tokens=16, reward_answer_tokens=8)
  r, _ = _compiled_for(tmp_path, capsys, c, name)
  _check_programs(r, ("rollout", "reward", "update"))


@pytest.mark.slow
def test_the_command_line_compiles_for_a_slice_without_a_tpu(tmp_path):
  """The front door, as a user types it, with JAX_PLATFORMS unset: the process
  keeps to its CPU (no TPU probe), prints the table and writes bench.json; a slice
  libtpu does not know is one line and exit status 2, nothing written."""
  env = main_env()
  env.pop("JAX_PLATFORMS", None)
  ok = subprocess.run(main_command(tmp_path / "ok", "--config.mode=bench",
                                   "--config.bench.topology=v5e:2x2"),
                      cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  assert ok.returncode == 0, ok.stderr[-2000:]
  r = json.loads((tmp_path / "ok" / "bench.json").read_text())
  assert (r["topology"], r["chips"], r["backend"], r["fits"]) == ("v5e:2x2", 4, "tpu", True)
  assert "compiled for v5e:2x2: 4 x TPU v5 lite" in ok.stdout
  bad = subprocess.run(main_command(tmp_path / "bad", "--config.mode=bench",
                                    "--config.bench.topology=v5e:2x3"),
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  assert bad.returncode == 2 and last_line(bad.stderr).startswith(
      "error: bench.topology='v5e:2x3': not a TPU slice libtpu knows (")
  assert not (tmp_path / "bad" / "bench.json").exists()


def test_a_program_the_chip_cannot_hold_is_reported_not_raised():
  """compile_program: the TPU compiler's refusal is a result naming the bytes it
  needed and had; summary and table name the program and say it does not fit."""
  found = topology.devices("v5e:2x2")
  mesh = Mesh(np.asarray(found).reshape(4), ("rows",))
  big = jax.ShapeDtypeStruct((4, 2**32), jnp.float32, sharding=NamedSharding(mesh, P("rows")))
  compiled, out = topology.compile_program(
      jax.jit(lambda x: jnp.sin(x) * 2 + x).lower(big).compile)
  assert compiled is None and out["fits"] is False and out["peak_bytes"] is None
  assert out["needed_bytes"] > 15 * GiB and 15 * GiB < out["available_bytes"] <= 16 * GiB
  assert "RESOURCE_EXHAUSTED" in out["error"] and "\n" not in out["error"]

  section = lambda **kw: {"compile_s": 1.0, "peak_bytes": 2**20, "flops": 1e9,
                          "bytes_accessed": 1e9, **kw}
  report = {"sampler": {"rollout": dict(out, weights_gathered=False, prompts=2, group_size=4)},
            "vq_decode": section(), "reward": section(), "ref_logp": section(),
            "grpo": section(mu=1, trainable_bytes_per_device=0, optimizer_bytes_per_device=0),
            "frozen_bytes_per_device": 0, "model": "m", "params": 1e6, "dtype": "bfloat16",
            "mesh": "data=4 fsdp=1 tensor=1"}
  report.update(topology.summary(report, "v5e:2x2", found))
  rollout = report["programs"]["rollout"]
  assert report["fits"] is False and rollout["fits"] is False
  assert rollout["needed_bytes_per_device"] == out["needed_bytes"]
  assert report["step_roofline_s"] is None and report["programs"]["reward"]["fits"]
  text = topology.table(report)
  assert f"| rollout | refused: needs {out['needed_bytes'] / GiB:.2f} GiB |" in text
  assert "does NOT fit" in text and f"rollout: {out['error']}" in text


COMPILER_REFUSALS = [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (128.00G) exceeds available HBM (15.75G).", 128 * GiB, int(15.75 * GiB)),
    ("XlaRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 17.74G "
     "of 15.75G hbm. Exceeded hbm capacity by 1.99G.", int(17.74 * GiB), int(15.75 * GiB)),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
     "hbm. Used 900.50M of 512.00M hbm.", int(900.5 * 2**20), 512 * 2**20),
    ("RESOURCE_EXHAUSTED: something else entirely", None, None),
]


@pytest.mark.parametrize("message,needed,available", COMPILER_REFUSALS)
def test_the_compilers_refusals_are_read(message, needed, available):
  got = topology.out_of_memory(RuntimeError("traceback line\n" + message + "\nmore"))
  assert got == (needed, available, message)


@pytest.mark.parametrize("error", [ValueError("shapes do not match"),
                                   RuntimeError("INTERNAL: Mosaic failed to compile")])
def test_other_compile_errors_are_raised(error):
  assert topology.out_of_memory(error) is None

  def fails():
    raise error
  with pytest.raises(type(error)):
    topology.compile_program(fails)


@pytest.mark.parametrize("name,says", [
    ("v5e", "does not match regex"), ("garbage", "does not match regex"),
    ("v5e:2x3", "not divisible"), ("v9:2x2", "Invalid TPU external name"),
])
def test_a_bad_slice_name_is_one_line_with_examples(name, says):
  with pytest.raises(InputError) as e:
    topology.devices(name)
  line = str(e.value)
  assert line.startswith(f"bench.topology={name!r}: not a TPU slice libtpu knows (")
  assert says in line and line.endswith(f"names look like {topology.EXAMPLES}")
  assert "\n" not in line


def test_without_libtpu_one_line_says_what_to_install(monkeypatch):
  monkeypatch.setattr(topology.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(InputError, match=r"^bench.topology='v5e:2x4' needs the TPU compiler "
                                       r"\(libtpu\): pip install \"gvu_jax\[tpu\]\"$"):
    topology.devices("v5e:2x4")
