"""The GvU policy of a workdir, written for transformers and PEFT.

  python -m gvu_jax.export --workdir=W [--step=N] --dst=D [--format=transformers|peft]
      [--dtype=float32|bfloat16] [--force] [--check]

transformers (default): the policy with LoRA merged into the weights, as a Janus
    checkpoint in the transformers layout (config.json, model-*.safetensors and
    their index, the conversion's tokenizer and processor files):
    `JanusForConditionalGeneration.from_pretrained(D)`.
peft: the adapters alone (adapter_config.json, adapter_model.safetensors, PEFT's
    module names), for `PeftModel.from_pretrained(base, D)` on the checkpoint the
    run was converted from.

Names come from the converter's one table (convert/targets.py), read backwards;
every name and shape is checked before anything is written. D is written aside,
with a model card (README.md) and the EXPORTED marker last, then renamed into
place; an existing D is replaced only with --force. --check loads the export as
its users would and compares it with gvu_jax's policy (parity.compare, 1e-4 in
float32), as convert --check does for a conversion. Runs on a converted Janus
checkpoint export; embedded-world and X-Omni workdirs are refused in one line.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from absl import flags
from etils import epath

from gvu_jax import cli as cli_lib
from gvu_jax import checkpoint, lora, optimizer
from gvu_jax.convert import store
from gvu_jax.convert.source import read_json_object
from gvu_jax.convert.targets import lookup, targets
from gvu_jax.errors import InputError
from gvu_jax.models import build
from gvu_jax.models import vq as vq_lib
from gvu_jax.models.janus import JanusConfig

DONE_FILE = "EXPORTED"
FORMATS = ("transformers", "peft")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
SHARD_BYTES = 2 << 30
# Our LoRA targets -> the transformers modules they adapt (models/llama.py).
_LORA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                 "down": "mlp.down_proj"}


class Policy:
  """A workdir's GvU policy: the model config, the frozen base weights and the
  trained part (LoRA adapters, or full fine-tuning's weights) at `step`."""

  def __init__(self, workdir, step=None):
    gvu_dir = epath.Path(workdir) / "gvu"
    if not (gvu_dir / "model_config.json").exists():
      raise InputError(f"{workdir}: holds no GvU run (no gvu/model_config.json)")
    signature = read_json_object(gvu_dir / "model_config.json")
    self.source = signature.get("checkpoint")
    if not self.source:
      raise InputError(f"{workdir}: an embedded-world run; only runs on a converted Janus "
                       "checkpoint export to transformers and PEFT")
    self.model, frozen = store.load(self.source, dtype="float32", param_dtype=np.float32)
    if self.model.family != "janus":
      raise InputError(f"{workdir}: a {self.model.family} run; transformers has no "
                       f"{self.model.family} model to export to")
    self.lora = signature.get("gvu_lora") or {}
    run = read_json_object(gvu_dir / "run.json")["config"]
    if self.lora:
      like = build.create_adapters(self.model, 0, **self.lora)
    else:
      like = lora.full_ft_trainable(frozen, tuple(run.get("gvu.full_ft_modules") or ()))
    opt = ml_collections.ConfigDict({k[len("gvu."):]: v for k, v in run.items()
                                     if k.startswith("gvu.") and k.count(".") == 1})
    tx, _ = optimizer.make_optimizer(opt, 1)
    state = {"trainable": like, "opt_state": tx.init(like), "step": jnp.int32(0),
             "rng": jax.random.key_data(jax.random.key(0))}
    checkpoints = checkpoint.CheckpointStore(str(gvu_dir / "checkpoints"), keep=1 << 30)
    self.step = checkpoints.latest_step() if step is None else step
    if self.step is None or self.step not in checkpoints.manager.all_steps():
      checkpoints.close()
      raise InputError(f"{gvu_dir / 'checkpoints'}: no checkpoint of step "
                       f"{'(any)' if step is None else step}")
    state, _ = checkpoints.restore(self.step, state)
    checkpoints.close()
    self.trainable = jax.tree.map(np.asarray, state["trainable"])
    self.frozen = frozen
    self.run_config = run

  def params(self):
    """The policy's weights with every LoRA adapter merged into its kernel
    (W + A B alpha / r, as PEFT's merge does)."""
    merged = lora.merge(self.frozen, self.trainable)
    if not self.lora:
      return merged
    scale = self.lora["lora_alpha"] / self.lora["lora_rank"]

    def fold(tree):
      if not isinstance(tree, dict):
        return tree
      if "lora_a" in tree:
        out = {k: v for k, v in tree.items() if k not in lora.LORA_KEYS}
        out["kernel"] = tree["kernel"] + (tree["lora_a"] @ tree["lora_b"]) * scale
        return out
      return {k: fold(v) for k, v in tree.items()}

    return fold(merged)


def transformers_tensors(m, params):
  """Our parameter tree -> {transformers name: array in torch layout}, each
  checked against the name table's shape (convert/targets.py, backwards)."""
  out, table = {}, targets(m)
  for name, t in table.items():
    value = np.asarray(lookup(params, t.path), np.float32)
    if t.kind == "linear":
      value = value.T
    elif t.kind == "patch":    # dense over (p, q, c)-flattened patches -> conv [W, C, p, p]
      p = t.shape[-1]
      value = value.reshape(p, p, t.shape[1], t.shape[0]).transpose(3, 2, 0, 1)
    elif t.kind.startswith("part"):
      j, width = int(t.kind[-1]), t.shape[0]
      value = value[..., j * width:(j + 1) * width]
      value = value.T if value.ndim == 2 else value
    out[name] = value
  vq_cfg = JanusConfig.from_config(m).vq
  vq_shapes = vq_lib.expected_torch_shapes(vq_cfg)
  for key, shape in vq_shapes.items():
    *path, leaf = key.split(".")
    if key == "quantize.embedding.weight":
      leaf = path.pop()
    elif len(shape) == 4:
      leaf = "kernel"
    elif leaf == "weight":
      leaf = "scale"
    value = np.asarray(lookup(params["vq"], [int(n) if n.isdigit() else n
                                                      for n in path] + [leaf]), np.float32)
    out["model.vqmodel." + key] = value.transpose(3, 2, 0, 1) if len(shape) == 4 else value
  shapes = dict({k: t.shape for k, t in table.items()},
                **{"model.vqmodel." + k: s for k, s in vq_shapes.items()})
  for name, value in out.items():
    if tuple(value.shape) != tuple(shapes[name]):
      raise InputError(f"export: {name} has shape {value.shape}, the table says {shapes[name]}")
  return out


def peft_tensors(policy):
  """The adapters under PEFT's names for JanusForConditionalGeneration, and the
  module pattern they adapt."""
  out, kinds = {}, set()
  for i, layer in sorted(policy.trainable["lm"]["layers"].items()):
    for group in ("attn", "mlp"):
      for ours, node in sorted(layer.get(group, {}).items()):
        if "lora_a" not in node:
          continue
        kinds.add(ours)
        name = f"base_model.model.model.language_model.layers.{i}.{_LORA_MODULES[ours]}"
        out[f"{name}.lora_A.weight"] = np.asarray(node["lora_a"], np.float32).T
        out[f"{name}.lora_B.weight"] = np.asarray(node["lora_b"], np.float32).T
  modules = "|".join(sorted(_LORA_MODULES[k].replace(".", r"\.") for k in kinds))
  return out, rf".*language_model\.layers\.\d+\.({modules})"


def _image_token_ids(source):
  """(image token id, pad id) from the conversion's tokenizer."""
  from gvu_jax.text import janus as janus_text
  tok = janus_text.load_tokenizer(source)
  return tok.token_to_id(janus_text.IMG), tok.token_to_id(janus_text.PAD)


def _save_sharded(directory, tensors, dtype):
  from safetensors.numpy import save_file
  shards, size = [[]], 0
  for name in sorted(tensors):
    nbytes = tensors[name].size * np.dtype(dtype).itemsize
    if shards[-1] and size + nbytes > SHARD_BYTES:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  weight_map = {}
  for i, names in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({n: np.ascontiguousarray(tensors[n], dtype) for n in names},
              str(directory / file), metadata={"format": "pt"})
    weight_map.update({n: file for n in names})
  total = sum(t.size * np.dtype(dtype).itemsize for t in tensors.values())
  (directory / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _model_card(policy, fmt, workdir):
  report = epath.Path(workdir) / "eval" / "summary.md"
  lines = [f"# GvU policy ({fmt})", "",
           "Trained with gvu_jax: GRPO on the model's own understanding likelihood of the "
           "prompt (GvU, arXiv 2603.06043).", "",
           f"- base model: {policy.source} (converted from "
           f"{store.conversion_info(policy.source).get('source')})",
           f"- GvU step: {policy.step}",
           f"- training: {'LoRA ' + json.dumps(policy.lora) if policy.lora else 'full fine-tuning'}",
           "", "## Run config", "", "```json", json.dumps(policy.run_config, indent=2,
                                                          sort_keys=True), "```"]
  if report.exists():
    lines += ["", "## Evaluation", "", report.read_text()]
  return "\n".join(lines) + "\n"


def export(workdir, dst, step=None, fmt="transformers", dtype="float32", force=False,
           log=print):
  """Writes the policy of `workdir` to `dst` in `fmt`; returns the Policy."""
  if fmt not in FORMATS:
    raise InputError(f"--format={fmt}: expected one of {list(FORMATS)}")
  if dtype not in DTYPES:
    raise InputError(f"--dtype={dtype}: expected one of {list(DTYPES)}")
  dst = epath.Path(dst)
  if dst.exists() and any(dst.iterdir()):
    if not force:
      raise InputError(f"{dst} exists; pass --force to replace it")
    if not (dst / DONE_FILE).exists():
      raise InputError(f"{dst} exists and is not a gvu_jax export; refusing to replace it "
                       "even with --force")
  policy = Policy(workdir, step)
  if fmt == "peft" and not policy.lora:
    raise InputError(f"{workdir}: a full fine-tuning run has no adapters; use "
                     "--format=transformers")
  image_token_id, pad_id = _image_token_ids(policy.source)
  if fmt == "transformers":
    tensors = transformers_tensors(policy.model, policy.params())   # checked before writing
  else:
    tensors, pattern = peft_tensors(policy)
  tmp = epath.Path(str(dst) + ".partial")
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  if fmt == "transformers":
    from gvu_jax.convert import parity
    config = parity.hf_config(policy.model, image_token_id, pad_id).to_dict()
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    _save_sharded(tmp, tensors, DTYPES[dtype])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json", "processor_config.json"):
      if (epath.Path(policy.source) / name).exists():
        (epath.Path(policy.source) / name).copy(tmp / name)
  else:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v, DTYPES[dtype]) for k, v in tensors.items()},
              str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": policy.lora["lora_rank"],
        "lora_alpha": policy.lora["lora_alpha"], "target_modules": pattern,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "task_type": None, "use_rslora": False,
        "init_lora_weights": True,
        "base_model_name_or_path": store.conversion_info(policy.source).get("source")},
        indent=2))
  (tmp / "README.md").write_text(_model_card(policy, fmt, workdir))
  (tmp / DONE_FILE).write_text(json.dumps({"workdir": os.path.abspath(workdir),
                                          "step": policy.step, "format": fmt,
                                          "dtype": dtype}))
  if dst.exists():
    dst.rmtree()
  os.replace(str(tmp), str(dst))
  log(f"export: step {policy.step} of {workdir} as {fmt} in {dst}")
  return policy


def policy_model(policy, merged=False):
  """gvu_jax's model of the policy (float32): LoRA adapters applied as trained, or
  folded into the weights."""
  from flax import nnx
  graphdef, _ = build.abstract(policy.model, **({} if merged else policy.lora))
  params = policy.params() if merged else lora.merge(policy.frozen, policy.trainable)
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def check(dst, policy):
  """The export at `dst` loaded as its users load it (transformers; PEFT on the
  conversion's source checkpoint) against gvu_jax's policy -> JSON-able report."""
  import torch
  import transformers
  from gvu_jax.convert import parity
  image_token_id, pad_id = _image_token_ids(policy.source)
  fmt = json.loads((epath.Path(dst) / DONE_FILE).read_text())["format"]
  if fmt == "transformers":
    hf = transformers.JanusForConditionalGeneration.from_pretrained(str(dst),
                                                                     dtype=torch.float32)
  else:
    import peft
    source = store.conversion_info(policy.source)["source"]
    base = parity.load_transformers(source, policy.model)
    hf = peft.PeftModel.from_pretrained(base, str(dst)).base_model.model
  diffs = parity.compare(hf.eval(), policy_model(policy), image_token_id, pad_id)
  ok = parity.passed(diffs)
  return {"ok": all(ok.values()), "format": fmt, "passed": ok, "tolerance": parity.TOLERANCE,
          "max_abs_diff": {k: d for k, (d, _) in diffs.items()},
          "reference_scale": {k: s for k, (_, s) in diffs.items()}}


def define_flags():
  flags.DEFINE_string("workdir", None, "A GvU workdir (run on a converted Janus checkpoint).")
  flags.DEFINE_integer("step", None, "The GvU step to export (default: the latest).")
  flags.DEFINE_string("dst", None, "Output directory.")
  flags.DEFINE_enum("format", "transformers", FORMATS, "transformers (LoRA merged) or peft "
                    "(adapters only).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Stored dtype.")
  flags.DEFINE_bool("force", False, "Replace an existing export at --dst.")
  flags.DEFINE_bool("check", False, "After exporting, load it with transformers (and PEFT) "
                    "and compare against gvu_jax's policy; exit 1 above tolerance.")


def main(f):
  if not f.workdir or not f.dst:
    raise InputError("--workdir and --dst are required")
  policy = export(f.workdir, f.dst, f.step, f.format, f.dtype, f.force)
  if f.check:
    return cli_lib.check_status(check(f.dst, policy))


def cli():
  cli_lib.run(define_flags, main)


if __name__ == "__main__":
  cli()
