"""Run as one of two processes of 4 CPU devices each, joined by jax.distributed
(tests/test_hosts.py starts them): every kind of value the code moves onto the
mesh goes through sharding.to_global, and the host-agreement helpers of
gvu_jax/infra/hosts.py answer alike on both hosts.

  JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \\
      python tests/multihost_checks.py OUT_DIR

OUT_DIR/host<i>.json: {check: [passed, what it saw]}.
"""

import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gvu_jax.infra import hosts, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.rl.sampling import row_keys

ROWS = 8   # divisible by the batch devices (data x fsdp = 4)


def host_values():
  """name -> (value, expected numpy value, how it is put: "batch" or "params")."""
  ids = np.arange(ROWS * 5, dtype=np.int32).reshape(ROWS, 5)
  local = jax.local_devices()[0]
  key = jax.random.key(3)
  keys = row_keys(key, np.arange(ROWS))
  weights = {"attn": {"q": {"kernel": np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)}}}
  return {
      "numpy int32 rows": (ids, ids, "batch"),
      "numpy bool rows": (ids % 3 == 0, ids % 3 == 0, "batch"),
      "numpy float32 rows": ((ids[:, 0] / 7).astype(np.float32),
                             (ids[:, 0] / 7).astype(np.float32), "batch"),
      "numpy bfloat16 rows": (ids.astype(ml_dtypes.bfloat16), ids.astype(ml_dtypes.bfloat16),
                              "batch"),
      "numpy rows the mesh does not divide": (ids[:3], ids[:3], "batch"),
      "numpy scalar": (np.float32(2.5), np.float32(2.5), "batch"),
      "jax.Array committed to a local device": (jax.device_put(ids, local), ids, "batch"),
      "jax.Array uncommitted": (jnp.asarray(ids), ids, "batch"),
      "jitted output on local devices": (jax.jit(lambda x: x * 2)(ids), ids * 2, "batch"),
      "PRNG keys (row_keys)": (keys, np.asarray(jax.random.key_data(keys)), "batch"),
      "PRNG key data": (jax.random.key_data(keys), np.asarray(jax.random.key_data(keys)), "batch"),
      "a tree of mixed kinds": ({"ids": ids, "keys": (keys, jnp.ones(ROWS))},
                                {"ids": ids, "keys": (np.asarray(jax.random.key_data(keys)),
                                                      np.ones(ROWS, np.float32))}, "batch"),
      "weights as numpy": (weights, weights, "params"),
      "weights as local jax.Arrays": (jax.tree.map(jnp.asarray, weights), weights, "params"),
  }


def as_numpy(tree):
  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return sharding.to_host(x) if isinstance(x, jax.Array) else np.asarray(x)
  return jax.tree.map(one, tree)


def check_put(layout, value, expected, how):
  put = layout.put_batch if how == "batch" else layout.put_params
  want = layout.for_batch(value) if how == "batch" else layout.for_params(value)
  out = put(value)
  placed = jax.tree.leaves(jax.tree.map(
      lambda x, s: isinstance(x, jax.Array) and not x.is_fully_addressable and x.sharding == s,
      out, want))
  got = as_numpy(out)
  same = all(np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
             for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
  return all(placed) and same, f"placed={placed} same={same}"


def check_reshard(layout):
  """A global array (an earlier step's output) moved to another sharding."""
  x = np.arange(64, dtype=np.float32).reshape(8, 8)
  replicated = layout.put_batch(x[:3])   # rows the mesh does not divide: replicated
  rows = sharding.to_global(layout.put_params({"attn": {"q": {"kernel": x}}}),
                            {"attn": {"q": {"kernel": NamedSharding(layout.mesh, P("tensor"))}}})
  kept = layout.put_batch(layout.put_batch(x))
  scalar = layout.put_batch({"temperature": 2.5})["temperature"]   # Python scalars stay
  ok = (np.array_equal(sharding.to_host(replicated), x[:3])
        and rows["attn"]["q"]["kernel"].sharding.spec == P("tensor")
        and np.array_equal(sharding.to_host(rows["attn"]["q"]["kernel"]), x)
        and kept.sharding == layout.for_batch(x) and np.array_equal(sharding.to_host(kept), x)
        and scalar == 2.5 and isinstance(scalar, float))
  return ok, "resharded"


def check_one_program(layout):
  """40 weights already on the mesh, each of its own shape, moved to other
  shardings by one compiled program (not one per weight)."""
  compiled = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: event == hosts.COMPILED and compiled.append(event))
  weights = {f"w{i}": {"attn": {"q": {"kernel": np.full((8, 8 + 2 * i), i, np.float32)}}}
             for i in range(40)}
  placed = layout.put_params(weights)
  rows = jax.tree.map(lambda _: NamedSharding(layout.mesh, P("tensor")), weights)
  before = len(compiled)
  moved = sharding.to_global(placed, rows)
  programs = len(compiled) - before
  same = all(np.array_equal(sharding.to_host(a), b)
             for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(weights)))
  return programs == 1 and same, f"compiled {programs}, same={same}"


def check_agreement():
  """agreed() gives host 0's value everywhere; check_same() names the host that differs."""
  value = hosts.agreed("which host", hosts.index)
  try:
    hosts.check_same("prompts.txt", ["a red cube"])
    same_ok = True
  except InputError as e:
    same_ok = str(e)
  try:
    hosts.check_same("prompts.txt", ["a red cube", "host", hosts.index()])
    differs = None
  except InputError as e:
    differs = str(e)
  expected = (None if hosts.is_main() else
              "prompts.txt: host 1 read other contents than host 0 (digest ")
  ok = (value == 0 and same_ok is True
        and (differs is None if expected is None else differs.startswith(expected)))
  try:
    hosts.agreed("refused on host 0", lambda: (_ for _ in ()).throw(InputError("bad file")))
    refused = None
  except InputError as e:
    refused = str(e)
  return ok and refused == "bad file", f"value={value} same={same_ok} differs={differs} " \
                                       f"refused={refused}"


def main(out_dir):
  hosts.initialize()
  assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(),
                                                                jax.device_count())
  cfg = sharding.mesh_config()
  cfg.update(data=2, fsdp=2, tensor=2)
  layout = sharding.Layout.from_config(ml_collections_config(cfg))
  results = {}
  for name, (value, expected, how) in host_values().items():
    try:
      results[name] = check_put(layout, value, expected, how)
    except Exception:  # noqa: BLE001 - reported per check
      results[name] = (False, traceback.format_exc()[-600:])
  for name, check in (("global array resharded", lambda: check_reshard(layout)),
                      ("a tree moved by one program", lambda: check_one_program(layout)),
                      ("agreement", check_agreement)):
    try:
      results[name] = check()
    except Exception:  # noqa: BLE001
      results[name] = (False, traceback.format_exc()[-600:])
  with open(os.path.join(out_dir, f"host{jax.process_index()}.json"), "w") as f:
    json.dump(results, f, indent=1)


def ml_collections_config(mesh):
  import ml_collections
  return ml_collections.ConfigDict({"mesh": mesh})


if __name__ == "__main__":
  main(sys.argv[1])
