"""The GvU policy of a workdir, written where its users load it.

  python -m gvu_jax.export --workdir=W [--step=N] --dst=D
      [--format=transformers|peft|safetensors] [--dtype=float32|bfloat16] [--force] [--check]

transformers (the default for a run on a converted checkpoint): the policy with
    LoRA merged into the weights, in the base model's own layout.
    Janus: transformers' layout (config.json, model-*.safetensors and their
    index, the conversion's tokenizer and processor files), for
    `JanusForConditionalGeneration.from_pretrained(D)`.
    X-Omni: its release's layout (the release's config.json, modeling code and
    tokenizer, kept by the conversion in release/; the weights under the
    release's names; its image-tokenizer files copied from the release when it
    is still where it was converted from), for
    `AutoModelForCausalLM.from_pretrained(D, trust_remote_code=True)`.
peft: the adapters alone (adapter_config.json, adapter_model.safetensors, PEFT's
    module names), for `PeftModel.from_pretrained(base, D)` on the checkpoint the
    run was converted from.
safetensors (the default, and the only format, for an embedded-world run; any
    run may ask for it): gvu_jax's own layout, the merged parameter tree under
    its own names ("lm.layers.0.attn.q.kernel", kernels [in, out]) in
    model-*.safetensors and their index, and config.json holding the model
    block; `python -m gvu_jax.generate --checkpoint=D` reads it back.

Names come from the converter's one table (convert/targets.py), read backwards;
every name and shape is checked before anything is written. The weights are
computed and written one shard (SHARD_BYTES) at a time from the base weights in
the conversion's dtype, so the host holds the base model plus one shard. D is
written aside, with a model card (README.md) and the EXPORTED marker last, then
renamed into place; an existing D is replaced only with --force. --check reads
every exported tensor back and compares it with the policy's, and for Janus
loads the export as its users would and compares it with gvu_jax's policy
(parity.compare, 1e-4 in float32), as convert --check does for a conversion.
"""

import json
import os
import re

import jax
import ml_collections
import ml_dtypes
import numpy as np
from absl import flags
from etils import epath

from gvu_jax.infra import checkpoint, cli as cli_lib, metrics
from gvu_jax.infra.errors import InputError
from gvu_jax.interop.convert import store
from gvu_jax.interop.convert.source import read_json_object
from gvu_jax.interop.convert.targets import lookup, place, targets
from gvu_jax.interop.convert.write import RELEASE_DIR, TOKENIZER_FILES
from gvu_jax.models import build, lora, vq as vq_lib
from gvu_jax.models.janus import JanusConfig

DONE_FILE = "EXPORTED"
FORMATS = ("transformers", "peft", "safetensors")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
SHARD_BYTES = 2 << 30
INDEX_FILE = "model.safetensors.index.json"
EMBEDDED_FORMAT = "gvu_jax"   # config.json "format" of the safetensors layout


class Policy:
  """A workdir's GvU policy: the model config, the frozen base weights (in the
  conversion's stored dtype, or `param_dtype`) and the trained part (LoRA
  adapters, or full fine-tuning's weights) at `step`. `weight(path)` is one
  weight of the policy in float32, computed when asked."""

  def __init__(self, workdir, step=None, param_dtype=None):
    gvu_dir = epath.Path(workdir) / "gvu"
    if not (gvu_dir / "model_config.json").exists():
      raise InputError(f"{workdir}: holds no GvU run (no gvu/model_config.json)")
    signature = read_json_object(gvu_dir / "model_config.json")
    self.source = signature.get("checkpoint")
    self.lora = signature.get("gvu_lora") or {}
    self.run_config = read_json_object(gvu_dir / "run.json")["config"]
    checkpoints = (checkpoint.CheckpointStore(str(gvu_dir / "checkpoints"), keep=1 << 30)
                   if (gvu_dir / "checkpoints").exists() else None)
    self.step = checkpoints and (checkpoints.latest_step() if step is None else step)
    if self.step is None or self.step not in checkpoints.manager.all_steps():
      if checkpoints:
        checkpoints.close()
      raise InputError(f"{gvu_dir / 'checkpoints'}: no checkpoint of step "
                       f"{'(any)' if step is None else step}")
    self.param_dtype, self._frozen, self._tree = param_dtype, None, None
    if self.source:
      self.model = store.read_converted_config(self.source)
      self.model.dtype = "float32"
    else:   # the embedded world: the run's own reference is its base model
      self.model = ml_collections.ConfigDict(
          {k: v for k, v in signature.items() if not k.startswith("gvu_")})
      self.model.dtype = "float32"
    try:   # one trace gives the base weights' shapes and the adapters'
      self._like, adapters = lora.split(build.abstract(self.model, **self.lora)[1])
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      raise InputError(f"{gvu_dir / 'model_config.json'}: not a model gvu_jax builds "
                       f"({type(e).__name__}: {e})") from None
    float32 = lambda t: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32), t)
    if self.lora:
      like = float32(adapters)
    else:
      modules = tuple(signature.get("gvu_full_ft_modules") or ())
      like = float32(jax.eval_shape(lambda f: lora.full_ft_trainable(f, modules), self._like))
    self.trainable = checkpoints.restore_part(self.step, {"trainable": like})["trainable"]
    checkpoints.close()
    self.gvu_dir = gvu_dir

  @property
  def frozen(self):
    """The base weights, read when first needed (the adapters alone do not)."""
    if self._frozen is None:
      if self.source:
        _, frozen = store.load(self.source, like_model=self.model,
                               param_dtype=self.param_dtype)
      else:
        like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
            s.shape, self.param_dtype or s.dtype), self._like)
        frozen = checkpoint.load_frozen(str(self.gvu_dir / "reference"), like)
      self._frozen = jax.tree.map(np.asarray, frozen)
    return self._frozen

  @property
  def tree(self):
    """Base weights and trained part in one tree (sharing the arrays: no copy)."""
    if self._tree is None:
      self._tree = lora.merge(self.frozen, self.trainable)
    return self._tree

  @property
  def family(self):
    return self.model.family if self.source else "embedded"

  def paths(self):
    """Every weight of the policy (the adapters folded away)."""
    return [p for p, _ in store.leaves_with_paths(self.tree) if p[-1] not in lora.LORA_KEYS]

  def shape(self, path):
    return tuple(lookup(self.tree, path).shape)

  def weight(self, path):
    """The policy's weight at `path` in float32, its LoRA adapter merged into the
    kernel (W + A B alpha / r, as PEFT's merge does)."""
    node = lookup(self.tree, path[:-1])
    value = np.asarray(node[path[-1]], np.float32)
    if path[-1] == "kernel" and "lora_a" in node:
      value = lora.fold(value, np.asarray(node["lora_a"]), np.asarray(node["lora_b"]),
                        self.lora["lora_alpha"] / self.lora["lora_rank"])
    return value

  def params(self):
    """The whole merged policy in float32 (for sampling and comparison)."""
    out = {}
    for path in self.paths():
      place(out, path, self.weight(path))
    return out


# ----------------------------------------------------- the policy's tensors
# Each format is {name: shape} plus make(name) -> the array, computed only when
# its shard is written.

def _to_torch(t, value):
  """Our layout -> transformers' for one table entry (the converter's inverse)."""
  if t.kind == "linear":
    return value.T
  if t.kind == "patch":    # dense over (p, q, c)-flattened patches -> conv [W, C, p, p]
    p = t.shape[-1]
    return value.reshape(p, p, t.shape[1], t.shape[0]).transpose(3, 2, 0, 1)
  if t.kind.startswith("part"):
    j, width = int(t.kind[-1]), t.shape[0]
    value = value[..., j * width:(j + 1) * width]
    return value.T if value.ndim == 2 else value
  return value


def _vq_entries(m):
  """The VQ model's transformers names -> (path in our tree, torch shape)."""
  out = {}
  for key, shape in vq_lib.expected_torch_shapes(JanusConfig.from_config(m).vq).items():
    *path, leaf = key.split(".")
    if key == "quantize.embedding.weight":
      leaf = path.pop()
    elif len(shape) == 4:
      leaf = "kernel"
    elif leaf == "weight":
      leaf = "scale"
    path = ("vq",) + tuple(int(n) if n.isdigit() else n for n in path) + (leaf,)
    out["model.vqmodel." + key] = (path, tuple(shape))
  return out


def transformers_tensors(policy):
  """The policy under the base model's own names, in torch layout: ({name:
  shape}, make). Every shape is checked against the table before anything is
  computed (convert/targets.py, backwards)."""
  table, shapes, makers = targets(policy.model), {}, {}
  for name, t in table.items():
    got = jax.eval_shape(lambda v, t=t: _to_torch(t, v),
                         jax.ShapeDtypeStruct(policy.shape(t.path), np.float32)).shape
    shapes[name], want = tuple(got), tuple(t.shape)
    makers[name] = lambda t=t: _to_torch(t, policy.weight(t.path))
    if shapes[name] != want:
      raise InputError(f"export: {name} has shape {shapes[name]}, the table says {want}")
  if policy.model.family == "janus":
    for name, (path, want) in _vq_entries(policy.model).items():
      conv = len(want) == 4
      got = policy.shape(path)
      shapes[name] = tuple(got[i] for i in (3, 2, 0, 1)) if conv else got
      makers[name] = lambda path=path, conv=conv: (
          policy.weight(path).transpose(3, 2, 0, 1) if conv else policy.weight(path))
      if shapes[name] != want:
        raise InputError(f"export: {name} has shape {shapes[name]}, the table says {want}")
  return shapes, lambda name: makers[name]()


def own_tensors(policy):
  """The policy under gvu_jax's own names ("lm.layers.0.attn.q.kernel")."""
  paths = {".".join(str(k) for k in p): p for p in policy.paths()}
  return ({n: policy.shape(p) for n, p in paths.items()},
          lambda name: policy.weight(paths[name]))


def peft_tensors(policy):
  """The adapters under PEFT's names for the base model's own modules (the name
  table's, e.g. model.language_model.layers.3.self_attn.q_proj for Janus), and
  the pattern of modules they adapt."""
  names = {t.path: name for name, t in targets(policy.model).items()}
  out, prefixes, modules = {}, set(), set()
  for i, layer in sorted(policy.trainable["lm"]["layers"].items()):
    for group in ("attn", "mlp"):
      for ours, node in sorted(layer.get(group, {}).items()):
        if "lora_a" not in node:
          continue
        module = names[("lm", "layers", i, group, ours, "kernel")][:-len(".weight")]
        prefix, rest = module.split(f"layers.{i}.")
        prefixes.add(prefix)
        modules.add(rest)
        out[f"base_model.model.{module}.lora_A.weight"] = np.asarray(node["lora_a"]).T
        out[f"base_model.model.{module}.lora_B.weight"] = np.asarray(node["lora_b"]).T
  (prefix,) = prefixes
  pattern = (re.escape(prefix) + r"layers\.\d+\.("
             + "|".join(re.escape(m) for m in sorted(modules)) + ")")
  return out, pattern


# ------------------------------------------------------------------ writing

def _save_sharded(directory, shapes, make, dtype):
  """model-*.safetensors of about SHARD_BYTES each and their index, each shard's
  tensors computed just before it is written."""
  from safetensors.numpy import save_file
  itemsize = np.dtype(dtype).itemsize
  nbytes = {n: int(np.prod(s)) * itemsize for n, s in shapes.items()}
  shards, size = [[]], 0
  for name in sorted(shapes):
    if shards[-1] and size + nbytes[name] > SHARD_BYTES:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes[name]
  weight_map, bar = {}, metrics.Progress(len(shards), "export: shards", warmup=None)
  for i, names in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    # contiguous: safetensors writes a strided array in its memory order
    save_file({n: np.ascontiguousarray(make(n), dtype) for n in names},
              str(directory / file), metadata={"format": "pt"})
    weight_map.update({n: file for n in names})
    bar.update(1)
  bar.close()
  (directory / INDEX_FILE).write_text(json.dumps(
      {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, indent=2))


def iter_sharded(directory):
  """(name, array) of an index's shards, one shard in memory at a time (the
  inverse of _save_sharded)."""
  from safetensors import safe_open
  index = read_json_object(epath.Path(directory) / INDEX_FILE)["weight_map"]
  for file in sorted(set(index.values())):
    with safe_open(str(epath.Path(directory) / file), framework="numpy") as f:
      for name in f.keys():
        yield name, f.get_tensor(name)


def export_info(directory):
  """What an export records of itself (EXPORTED): workdir, step, format, family, dtype."""
  return read_json_object(epath.Path(directory) / DONE_FILE)


def read_sharded(directory):
  return dict(iter_sharded(directory))


def load_own(directory):
  """An export in gvu_jax's own layout -> (model config, float32 parameter tree)."""
  config = read_json_object(epath.Path(directory) / "config.json")
  if config.get("format") != EMBEDDED_FORMAT:
    raise InputError(f"{directory}/config.json: not a gvu_jax export (format "
                     f"{config.get('format')!r}, expected {EMBEDDED_FORMAT!r})")
  m = ml_collections.ConfigDict(config["model"])
  params = {}
  for name, value in iter_sharded(directory):
    place(params, tuple(int(k) if k.isdigit() else k for k in name.split(".")),
          np.asarray(value, np.float32))
  return m, params


def _image_token_ids(source):
  """(image token id, pad id) from the conversion's tokenizer."""
  from gvu_jax.text import janus as janus_text
  tok = janus_text.load_tokenizer(source)
  return tok.token_to_id(janus_text.IMG), tok.token_to_id(janus_text.PAD)


def _release_files(policy):
  """X-Omni: the release's own files the conversion kept, and the image-tokenizer
  weight files its config.json names -> ({name: path to copy}, [names not found])."""
  release = epath.Path(policy.source) / RELEASE_DIR
  if not (release / "config.json").exists():
    raise InputError(f"{policy.source}: keeps no {RELEASE_DIR}/config.json (converted by an "
                     "older gvu_jax); convert the release again to export in its layout")
  files = {f.name: f for f in release.iterdir() if f.name != "README.md"}
  encoder = (read_json_object(release / "config.json").get("vision_config") or {}).get(
      "encoder") or {}
  source = epath.Path(store.conversion_info(policy.source)["source"])
  missing = []
  for key in ("siglip_path", "projector_path"):
    if encoder.get(key):
      if (source / encoder[key]).exists():
        files[encoder[key]] = source / encoder[key]
      else:
        missing.append(encoder[key])
  return files, missing


def _model_card(policy, fmt, workdir, notes):
  report = epath.Path(workdir) / "eval" / "summary.md"
  base = (f"{policy.source} (converted from "
          f"{store.conversion_info(policy.source).get('source')})" if policy.source
          else "the embedded world's pretrained model (this workdir's gvu/reference)")
  lines = [f"# GvU policy ({fmt})", "",
           "Trained with gvu_jax: GRPO on the model's own understanding likelihood of the "
           "prompt (GvU, arXiv 2603.06043).", "",
           f"- base model: {base}",
           f"- GvU step: {policy.step}",
           f"- training: {'LoRA ' + json.dumps(policy.lora) if policy.lora else 'full fine-tuning'}",
           *[f"- note: {n}" for n in notes],
           "", "## Run config", "", "```json", json.dumps(policy.run_config, indent=2,
                                                          sort_keys=True), "```"]
  if report.exists():
    lines += ["", "## Evaluation", "", report.read_text()]
  return "\n".join(lines) + "\n"


def _check_destination(dst, force):
  if dst.exists() and any(dst.iterdir()):
    if not force:
      raise InputError(f"{dst} exists; pass --force to replace it")
    if not (dst / DONE_FILE).exists():
      raise InputError(f"{dst} exists and is not a gvu_jax export; refusing to replace it "
                       "even with --force")


def _check_format(policy, fmt, workdir):
  if fmt in ("transformers", "peft") and not policy.source:
    raise InputError(f"{workdir}: an embedded-world run has no {fmt} model; use "
                     "--format=safetensors (gvu_jax's own layout)")
  if fmt == "peft" and not policy.lora:
    raise InputError(f"{workdir}: a full fine-tuning run has no adapters; use "
                     "--format=transformers")


def export(workdir, dst, step=None, fmt=None, dtype="float32", force=False, log=print):
  """Writes the policy of `workdir` to `dst` in `fmt` (default: transformers for
  a converted checkpoint, safetensors for the embedded world); returns the Policy."""
  if fmt is not None and fmt not in FORMATS:
    raise InputError(f"--format={fmt}: expected one of {list(FORMATS)}")
  if dtype not in DTYPES:
    raise InputError(f"--dtype={dtype}: expected one of {list(DTYPES)}")
  dst = epath.Path(dst)
  _check_destination(dst, force)
  policy = Policy(workdir, step)
  fmt = fmt or ("transformers" if policy.source else "safetensors")
  _check_format(policy, fmt, workdir)
  files, notes = {}, []
  if fmt == "transformers":
    shapes, make = transformers_tensors(policy)   # every name and shape checked here
    if policy.family == "xomni":
      files, missing = _release_files(policy)
      if missing:
        notes.append(f"the release's image-tokenizer files {missing} were not found at "
                     "its source; copy them from the release beside these weights")
    else:
      files = {n: epath.Path(policy.source) / n for n in TOKENIZER_FILES
               if (epath.Path(policy.source) / n).exists()}
  elif fmt == "safetensors":
    shapes, make = own_tensors(policy)
    tokenizer = epath.Path(policy.source or epath.Path(workdir) / "pretrain") / "tokenizer.json"
    files = {"tokenizer.json": tokenizer} if tokenizer.exists() else {}
  tmp = epath.Path(str(dst) + ".partial")
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  if fmt == "peft":
    from safetensors.numpy import save_file
    tensors, pattern = peft_tensors(policy)
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
  else:
    if "config.json" not in files:   # (X-Omni's is its release's own)
      if fmt == "safetensors":
        config = {"format": EMBEDDED_FORMAT, "model": policy.model.to_dict()}
      else:
        from gvu_jax.interop.convert import parity
        config = parity.hf_config(policy.model, *_image_token_ids(policy.source)).to_dict()
      (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    _save_sharded(tmp, shapes, make, DTYPES[dtype])
    for name, path in files.items():
      path.copy(tmp / name)
  for note in notes:
    log(f"export: note: {note}")
  (tmp / "README.md").write_text(_model_card(policy, fmt, workdir, notes))
  (tmp / DONE_FILE).write_text(json.dumps({"workdir": os.path.abspath(workdir),
                                          "step": policy.step, "format": fmt,
                                          "family": policy.family, "dtype": dtype}))
  if dst.exists():
    dst.rmtree()
  os.replace(str(tmp), str(dst))
  log(f"export: step {policy.step} of {workdir} as {fmt} in {dst}")
  return policy


def policy_model(policy, merged=False):
  """gvu_jax's model of the policy (float32): LoRA adapters applied as trained, or
  folded into the weights."""
  from flax import nnx
  import jax.numpy as jnp
  graphdef, _ = build.abstract(policy.model, **({} if merged else policy.lora))
  params = policy.params() if merged else policy.tree
  return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params))


def check_files(dst, policy):
  """Every tensor the export holds, read back, against the policy's own (rounded
  to the export's dtype) -> the largest |difference| (0 when written right)."""
  done = export_info(dst)
  fmt, dtype = done["format"], DTYPES[done["dtype"]]
  if fmt == "peft":
    from safetensors.numpy import load_file
    stored = load_file(str(epath.Path(dst) / "adapter_model.safetensors")).items()
    expected = peft_tensors(policy)[0]
    names, make = set(expected), expected.__getitem__
  else:
    stored = iter_sharded(dst)
    shapes, make = (transformers_tensors if fmt == "transformers" else own_tensors)(policy)
    names = set(shapes)
  seen, worst = set(), 0.0
  for name, value in stored:
    if name not in names:
      raise InputError(f"{dst}: holds {name}, which the policy does not")
    want = np.asarray(np.asarray(make(name), dtype), np.float32)
    worst = max(worst, float(np.max(np.abs(np.asarray(value, np.float32) - want), initial=0)))
    seen.add(name)
  if names - seen:
    raise InputError(f"{dst}: lacks {sorted(names - seen)[0]}")
  return worst


def check(dst, policy):
  """The export at `dst` read back, and for Janus loaded as its users load it
  (transformers; PEFT on the conversion's source checkpoint) and run against
  gvu_jax's policy -> JSON-able report."""
  fmt = export_info(dst)["format"]
  files_diff = check_files(dst, policy)
  report = {"format": fmt, "files_max_abs_diff": files_diff}
  if policy.family != "janus" or fmt == "safetensors":
    return dict(report, ok=files_diff == 0.0)
  import torch
  import transformers
  from gvu_jax.interop.convert import parity
  image_token_id, pad_id = _image_token_ids(policy.source)
  if fmt == "transformers":
    hf = transformers.JanusForConditionalGeneration.from_pretrained(str(dst),
                                                                     dtype=torch.float32)
  else:
    import peft
    source = store.conversion_info(policy.source)["source"]
    if not epath.Path(source).is_dir():
      raise InputError(f"--check: {source!r}, the checkpoint this run was converted from, "
                       "is not there; PEFT adapters are checked on it")
    base = parity.load_transformers(source, policy.model)
    hf = peft.PeftModel.from_pretrained(base, str(dst)).base_model.model
  diffs = parity.compare(hf.eval(), policy_model(policy), image_token_id, pad_id)
  ok = parity.passed(diffs)
  return dict(report, ok=all(ok.values()) and files_diff == 0.0, passed=ok,
              tolerance=parity.TOLERANCE,
              max_abs_diff={k: d for k, (d, _) in diffs.items()},
              reference_scale={k: s for k, (_, s) in diffs.items()})


def define_flags():
  flags.DEFINE_string("workdir", None, "A GvU workdir.")
  flags.DEFINE_integer("step", None, "The GvU step to export (default: the latest).")
  flags.DEFINE_string("dst", None, "Output directory.")
  flags.DEFINE_enum("format", None, FORMATS, "transformers (LoRA merged, the base model's "
                    "layout; the default for a converted checkpoint), peft (adapters only) "
                    "or safetensors (gvu_jax's own layout; the default for the embedded world).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Stored dtype.")
  flags.DEFINE_bool("force", False, "Replace an existing export at --dst.")
  flags.DEFINE_bool("check", False, "After exporting, read every tensor back and (Janus) load "
                    "it with transformers (and PEFT) against gvu_jax's policy; exit 1 above "
                    "tolerance.")


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
