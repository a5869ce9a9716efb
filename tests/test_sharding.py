"""Sharding: the mesh from the config, logical names on every weight, and the
same results on 8 fake CPU devices as on one (tests/mesh_checks.py runs the
sharded computations in a subprocess; XLA's device count is fixed at start-up)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers_model as hm
from gvu_jax.infra import sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.models import build, presets
from helpers_run import REPO, run_main

HERE = os.path.dirname(os.path.abspath(__file__))


def mesh_cfg(**axes):
  cfg = sharding.mesh_config()
  cfg.update(axes)
  return cfg


# --- the mesh from the config ---------------------------------------------------

def test_mesh_shape_fills_the_free_axis():
  assert sharding.mesh_shape(mesh_cfg(), 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == {
      "data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("axes,devices,message", [
    (dict(data=3), 8, "mesh: data=3 fsdp=1 tensor=1 needs 3 devices, this run has 8"),
    (dict(data=-1, tensor=3), 8, "mesh: 8 devices cannot be split into data=-1 fsdp=1 tensor=3"),
    (dict(data=-1, fsdp=-1), 8, "mesh: only one axis may be -1"),
    (dict(tensor=0), 8, "mesh.tensor=0: expected a positive integer or -1"),
    (dict(fsdp=-2), 8, "mesh.fsdp=-2: expected a positive integer or -1"),
])
def test_impossible_mesh_is_refused(axes, devices, message):
  with pytest.raises(InputError, match=message.replace("(", r"\(")):
    sharding.mesh_shape(mesh_cfg(**axes), devices)


@pytest.mark.slow
def test_impossible_mesh_from_the_command_line(tmp_path):
  proc = run_main(str(tmp_path), "--config.mesh.tensor=2", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: mesh: 1 devices cannot be split into data=-1 fsdp=1 tensor=2 "
      "(the fixed axes need a multiple of 2)")


class FakeMesh:
  """A mesh's shape without the devices (Layout.spec and check_batch read only it)."""
  shape = {"data": 2, "fsdp": 4, "tensor": 2}
  size = 16


def test_batch_not_divisible_by_the_mesh():
  sharding.single_device().check_batch("gvu.prompts_per_step", 3)   # one device: anything
  layout = sharding.Layout(FakeMesh())
  layout.check_batch("gvu.prompts_per_step", 16)
  with pytest.raises(InputError, match=r"gvu.prompts_per_step=12: not divisible by the mesh's "
                     r"batch devices \(data x fsdp = 8, mesh data=2 fsdp=4 tensor=2\)"):
    layout.check_batch("gvu.prompts_per_step", 12)


# --- logical axis names ----------------------------------------------------------

@pytest.mark.parametrize("model", ["synthetic_mini_lora", "janus_small", "janus_pro_7b",
                                   "xomni_en"])
def test_every_weight_has_logical_axes(model):
  if model == "synthetic_mini_lora":
    _, params = build.abstract(hm.mini_cfg(), **hm.LORA)
  else:
    _, params = build.abstract(presets.preset(model),
                               lora_rank=8, lora_alpha=32.0, lora_targets=("q", "down"))
  assert sharding.unnamed_params(params) == []
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    assert len(sharding.param_axes(sharding.path_text(path), x.ndim)) == x.ndim


def test_param_axes_of_derived_weights():
  assert sharding.param_axes("lm/layers/3/attn/q/kernel", 2) == ("embed", "heads")
  assert sharding.param_axes("lm/layers/3/attn/q/lora_a", 2) == ("embed", None)
  assert sharding.param_axes("lm/layers/3/mlp/down/lora_b", 2) == (None, "embed")
  assert sharding.param_axes("gen_head/fc2/bias", 1) == ("vocab",)
  assert sharding.param_axes("vision/blocks/0/norm1/bias", 1) == ("norm",)
  assert sharding.param_axes("vq/decoder/conv_in/kernel", 4) == (None,) * 4
  # optimizer moments follow their weight
  assert sharding.param_axes("opt_state/1/0/mu/lm/layers/0/mlp/up/kernel", 2) == ("embed", "mlp")
  assert sharding.param_axes("lm/embed/embedding", 2) == ("table_rows", None)
  assert sharding.param_axes("step", 0) is None


def test_spec_maps_names_and_keeps_indivisible_dims_whole():
  layout = sharding.Layout(FakeMesh())
  P = jax.sharding.PartitionSpec
  assert layout.spec(("embed", "heads"), (64, 32)) == P("fsdp", "tensor")
  assert layout.spec(("embed", "heads"), (6, 32)) == P(None, "tensor")   # 6 % 4
  assert layout.spec(("batch", "length"), (16, 7)) == P(("data", "fsdp"), None)
  assert layout.spec(("batch",), (4,)) == P(None)                           # 4 % 8
  assert layout.spec(("norm",), (64,)) == P(None)
  # a mesh axis is used once per array
  assert layout.spec(("vocab", "heads"), (8, 8)) == P("tensor", None)
  assert layout.spec(("table_rows", None), (64, 8)) == P(("fsdp", "tensor"), None)
  # the rollout reads weights gathered over fsdp, rows still split
  rollout = layout.for_rollout()
  assert rollout.spec(("embed", "heads"), (64, 32)) == P(None, "tensor")
  assert rollout.spec(("table_rows", None), (64, 8)) == P("tensor", None)
  assert rollout.spec(("batch",), (16,)) == P(("data", "fsdp"))
  assert sharding.Layout(FakeMesh(), rollout_gathered=False).for_rollout().spec(
      ("embed", "heads"), (64, 32)) == P("fsdp", "tensor")


# --- 8 fake devices ----------------------------------------------------------------

@pytest.fixture(scope="module")
def checks(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mesh")
  out = str(tmp / "checks.npz")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, os.path.join(HERE, "mesh_checks.py"), out,
                         str(tmp / "ckpt")], cwd=REPO, capture_output=True, text=True, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


MESHES = ("2x2x2", "tensor8")


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.slow
def test_sharded_sampling_gives_the_same_tokens(checks, mesh):
  np.testing.assert_array_equal(checks[f"sample_codes/{mesh}"], checks["sample_codes/one"])
  np.testing.assert_allclose(checks[f"sample_logp/{mesh}"], checks["sample_logp/one"],
                             atol=1e-5)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.slow
def test_sharded_grpo_step_matches_one_device(checks, mesh, kind):
  before_vs_after = np.abs(checks[f"grpo_{kind}/one"]).max()
  assert before_vs_after > 0
  np.testing.assert_allclose(checks[f"grpo_{kind}/{mesh}"], checks[f"grpo_{kind}/one"],
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(checks[f"grpo_{kind}_loss/{mesh}"],
                             checks[f"grpo_{kind}_loss/one"], rtol=1e-6)
  assert checks[f"grpo_kept_shardings/{mesh}"]


@pytest.mark.slow
def test_splash_attention_runs_per_device_over_a_mesh(checks):
  """Over a 2x2x2 mesh splash attention (in a shard_map) gives XLA attention's
  value and gradients, as on one device."""
  for name in ("one", "2x2x2"):
    np.testing.assert_allclose(checks[f"splash/{name}"], checks["splash/xla"], atol=2e-5,
                               rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_saved_under_fsdp8_restores_under_tensor4(checks):
  assert str(checks["saved_q_spec"]) == "('fsdp', None)"
  assert str(checks["restore_q_spec"]) == "(None, 'tensor')"
  assert int(checks["restore_devices"]) == 4
  assert float(checks["restore_max_diff"]) == 0.0
  assert int(checks["restore_step"]) == 5
