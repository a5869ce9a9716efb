"""The sharded computations of tests/test_sharding.py, run in a subprocess with 8
fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set
before JAX starts, which a pytest process that already imported JAX cannot do).

  python tests/mesh_checks.py OUT.npz CHECKPOINT_DIR

Each check runs on one device and on meshes of the 8; OUT.npz holds the results.
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import helpers_model as hm
from gvu_jax import world
from gvu_jax.infra import checkpoint, sharding
from gvu_jax.models import attention, lora
from gvu_jax.models.umm import causal_mask
from gvu_jax.rl import grpo as rl_grpo
from gvu_jax.rl import optimizer, sampling

MESHES = {"one": dict(devices=1), "2x2x2": dict(data=2, fsdp=2, tensor=2),
          "tensor8": dict(tensor=8)}
G = 2


def layout(devices=8, **axes):
  cfg = sharding.mesh_config()
  cfg.update({**dict(data=1, fsdp=1, tensor=1), **axes})
  return sharding.Layout(sharding.make_mesh(cfg, jax.devices()[:devices]), sharding.DEFAULT_RULES)


def flat(tree):
  return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])


def sample(lay, graphdef, params, ids, valid):
  sampler = sampling.Sampler(graphdef, sampling.SamplingConfig(cfg_weight=3.0),
                             num_tokens=world.NUM_CELLS,
                             uncond_row=hm.templates().unconditional(1), group_size=G,
                             layout=lay)
  with lay.active():
    out = sampler(lay.put_params(params), *lay.put_batch((ids, valid)), jax.random.key(7))
  return np.asarray(out.codes), np.asarray(out.logp_sampled)


def grpo(lay, graphdef, roles, trainable, frozen, batch):
  """One Adam step from the same state; -> the new trainable weights, flat."""
  tx, _ = optimizer.make_optimizer(optimizer_config(), 10)
  trainable = jax.tree.map(jnp.copy, trainable)   # the state is donated
  state = lay.put_params({"trainable": trainable, "opt_state": tx.init(trainable),
                          "step": jnp.int32(0), "rng": jax.random.key_data(jax.random.key(0))})
  frozen = lay.put_params(frozen)
  with lay.active():
    step = rl_grpo.make_grpo_step(graphdef, roles, tx, clip_eps=0.2, beta=0.05, grad_accum=2,
                             layout=lay, state=state)
    new, metrics = step(state, frozen, lay.put_batch(batch))
  same_place = all(a.sharding == b for a, b in
                   zip(jax.tree.leaves(new), jax.tree.leaves(lay.for_params(new))))
  return flat(new["trainable"]), float(metrics["loss"]), same_place


def optimizer_config():
  return ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule="constant",
                                        weight_decay=0.0, max_grad_norm=1.0,
           adam_b1=0.9, adam_b2=0.95, adam_eps=1e-8))


def main(out_path, ckpt_dir):
  assert jax.device_count() == 8, jax.devices()
  graphdef, params = hm.mini()
  ids, valid = hm.prompts(4)
  out = {}
  for name, axes in MESHES.items():
    codes, logp = sample(layout(**axes), graphdef, params, ids, valid)
    out[f"sample_codes/{name}"], out[f"sample_logp/{name}"] = codes, logp

  rows = 4 * G
  rng = np.random.default_rng(0)
  batch = {"prompt_ids": np.repeat(ids, G, 0), "prompt_valid": np.repeat(valid, G, 0),
           "codes": hm.random_codes(3, rows), "advantages": rng.normal(size=rows).astype(
               np.float32)}
  batch["ref_logp"] = np.asarray(rl_grpo.make_logp_fn(graphdef, lora.Roles(False), False)(
      params, params, batch)["ref_logp"]) - 0.01
  lora_graphdef, lora_params = hm.mini_lora()
  base, adapters = lora.split(lora_params)
  adapters = jax.tree.map(lambda x: x + 0.01, adapters)   # B != 0: the adapters matter
  for name, axes in MESHES.items():
    lay = layout(**axes)
    full = grpo(lay, graphdef, lora.Roles(False), params, params, batch)
    low = grpo(lay, lora_graphdef, lora.Roles(True), adapters, base, batch)
    out[f"grpo_full/{name}"], out[f"grpo_full_loss/{name}"] = full[0], full[1]
    out[f"grpo_lora/{name}"], out[f"grpo_lora_loss/{name}"] = low[0], low[1]
    out[f"grpo_kept_shardings/{name}"] = full[2] and low[2]

  # A checkpoint saved under FSDP over 8 devices, restored under tensor parallelism
  # over 4 of them.
  tx, _ = optimizer.make_optimizer(optimizer_config(), 10)
  saved = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(5)}
  fsdp8, tensor4 = layout(fsdp=8), layout(devices=4, tensor=4)
  store = checkpoint.CheckpointStore(ckpt_dir, keep=1)
  store.save(5, fsdp8.put_params(saved), {"step": 5})
  store.close()
  like = tensor4.put_params(jax.tree.map(jnp.zeros_like, saved))
  store = checkpoint.CheckpointStore(ckpt_dir, keep=1)
  restored, meta = store.restore(store.latest_step(), like)
  store.close()
  q = restored["params"]["lm"]["layers"][0]["attn"]["q"]["kernel"]
  out["restore_max_diff"] = float(np.max(np.abs(flat(restored) - flat(saved))))
  out["restore_devices"] = len(q.sharding.device_set)
  out["restore_q_spec"] = str(tuple(q.sharding.spec))
  out["saved_q_spec"] = str(tuple(fsdp8.for_params(saved)["params"]["lm"]["layers"][0]["attn"][
      "q"]["kernel"].spec))
  out["restore_step"] = int(meta["step"])

  # Splash attention over a mesh runs in a shard_map, each device on its rows and
  # heads (Pallas' interpreter here; the TPU compiler refuses it unpartitioned).
  q, k, v = (jax.random.normal(jax.random.key(i), (4, 40, 4, 16)) for i in range(3))
  k, v = (x[:, :, :2].transpose(0, 2, 1, 3) for x in (k, v))   # [B, Hkv=2, S, D]
  attn_valid = np.ones((4, 40), bool)
  attn_valid[0, :7] = False
  mask = causal_mask(jnp.asarray(attn_valid))
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention.attention(q, k, v, mask, impl)))
  for name, axes in (("one", dict(devices=1)), ("2x2x2", MESHES["2x2x2"])):
    lay = layout(**axes)
    with lay.active():
      value, grads = jax.jit(jax.value_and_grad(loss("splash"), argnums=(0, 1, 2)))(q, k, v)
    out[f"splash/{name}"] = np.concatenate([[float(value)], flat(grads)])
  value, grads = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  out["splash/xla"] = np.concatenate([[float(value)], flat(grads)])
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(*sys.argv[1:])
