"""Where every array lives: the device mesh, logical axis names and the rules
that map them onto the mesh (the MaxText / big_vision scheme).

Mesh axes (`config.mesh`, -1 = the devices left over):
  data    batch rows; weights replicated.
  fsdp    batch rows too, and weights (plus optimizer state) split along their
          `embed` axis and gathered layer by layer when used (ZeRO-3).
  tensor  weights split along heads / mlp / vocab (Megatron); activations too.

Every weight has logical axis names (PARAM_AXES, matched on the end of its path
in the parameter dict, so optimizer moments and LoRA adapters follow their
weight); `config.mesh.rules` maps names to mesh axes. A dimension the mesh axes
do not divide stays whole (replicated) rather than failing.

Activations are constrained at the decoder's layer boundaries (`constrain`),
inside `with layout.active():`, to rows over (data, fsdp).
"""

import contextlib
import dataclasses
import functools
import math
import re

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from gvu_jax.infra.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or axes). Names not listed stay replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("table_rows", ("fsdp", "tensor")),
)

# Logical axes of every weight, by the end of its path (first match wins).
# Biases take their kernel's output axis, LoRA A its input axis and LoRA B its
# output axis (see `param_axes`). None: replicated whatever its rank (the VQ
# convolutions, 70 M parameters in Janus, read whole by every device).
PARAM_AXES = (
    # Lookup tables split by rows only: a gather from a table split along its
    # width would have to be replicated first (XLA's "involuntary full remat").
    (r"(lm/embed|lm/mm_embed|gen_embed)/embedding", ("table_rows", None)),
    (r"lm/(lm_head|mm_head)/kernel", ("embed", "vocab")),
    (r"attn/q/kernel", ("embed", "heads")),
    (r"attn/(k|v)/kernel", ("embed", "kv_heads")),
    (r"attn/o/kernel", ("heads", "embed")),
    (r"mlp/(gate|up)/kernel", ("embed", "mlp")),
    (r"mlp/down/kernel", ("mlp", "embed")),
    (r"vision/blocks/\d+/qkv/kernel", ("embed", "heads")),
    (r"vision/blocks/\d+/proj/kernel", ("heads", "embed")),
    (r"vision/blocks/\d+/fc1/kernel", ("embed", "mlp")),
    (r"vision/blocks/\d+/fc2/kernel", ("mlp", "embed")),
    (r"vision/patch_embed/kernel", ("patch", "embed")),
    (r"vision/pos_embed", ("position", "embed")),
    (r"(aligner|gen_aligner|gen_head)/fc1/kernel", ("embed", "mlp")),
    (r"(aligner|gen_aligner)/fc2/kernel", ("mlp", "embed")),
    (r"gen_head/fc2/kernel", ("mlp", "vocab")),
    (r"\w*norm\w*/(scale|bias)", ("norm",)),
    (r"vq/.*", None),
)
_DERIVED = re.compile(r"(.*)/(bias|lora_a|lora_b)$")


def mesh_config():
  """The `mesh` block every recipe carries. rollout_gathered: the sampler reads
  weights gathered over fsdp (one all-gather per rollout instead of one per token
  step; costs the unsplit weights' memory on every fsdp device)."""
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules=DEFAULT_RULES,
                                        rollout_gathered=True))


def mesh_shape(mesh_cfg, device_count):
  """{"data": n, ...} from the config, with -1 standing for the rest."""
  sizes = {}
  for axis in MESH_AXES:
    value = mesh_cfg[axis]
    if not isinstance(value, int) or (value < 1 and value != -1):
      raise InputError(f"mesh.{axis}={value!r}: expected a positive integer or -1 (the rest)")
    sizes[axis] = value
  free = [a for a in MESH_AXES if sizes[a] == -1]
  if len(free) > 1:
    raise InputError(f"mesh: only one axis may be -1, got {', '.join('mesh.' + a for a in free)}")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if device_count % fixed:
      raise InputError(f"mesh: {device_count} devices cannot be split into "
                       f"{_shape_text(sizes)} (the fixed axes need a multiple of {fixed})")
    sizes[free[0]] = device_count // fixed
  if math.prod(sizes.values()) != device_count:
    raise InputError(f"mesh: {_shape_text(sizes)} needs {math.prod(sizes.values())} devices, "
                     f"this run has {device_count}")
  return sizes


def _shape_text(sizes):
  return " ".join(f"{a}={v}" for a, v in sizes.items())


def make_mesh(mesh_cfg, devices=None):
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(mesh_shape(mesh_cfg, len(devices)).values())
  try:   # topology-aware order on TPU; plain order elsewhere
    array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # noqa: BLE001 - CPU and GPU have no physical topology to respect
    array = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(array, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def path_text(path):
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def param_axes(path, ndim):
  """Logical axis names of the weight at `path` ("lm/layers/0/attn/q/kernel");
  None for one with no entry (a scalar, a PRNG key, an unknown leaf)."""
  derived = _DERIVED.match(path)
  if derived:
    base = param_axes(derived.group(1) + "/kernel", 2)
    if base is None:
      return param_axes_direct(path, ndim)
    kind = derived.group(2)
    return {"bias": base[-1:], "lora_a": (base[0], None), "lora_b": (None, base[-1])}[kind]
  return param_axes_direct(path, ndim)


def param_axes_direct(path, ndim):
  for pattern, axes in PARAM_AXES:
    if re.search(rf"(^|/){pattern}$", path):
      return (None,) * ndim if axes is None else axes
  return None


def unnamed_params(params):
  """Paths of weights PARAM_AXES does not name (should be none)."""
  return [path_text(p) for p, x in jax.tree_util.tree_leaves_with_path(params)
          if param_axes(path_text(p), np.ndim(x)) is None]


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the rules that place arrays on it."""
  mesh: jax.sharding.Mesh
  rules: tuple = DEFAULT_RULES
  rollout_gathered: bool = True

  @classmethod
  def from_config(cls, config, devices=None):
    m = config.mesh
    return cls(make_mesh(m, devices), tuple((k, v) for k, v in m.rules),
               m.get("rollout_gathered", True))

  def for_rollout(self):
    """The layout the sampler reads weights in: without fsdp splits when
    rollout_gathered (each of the N token steps reads every weight; gathering
    them once per rollout replaces N all-gathers with one)."""
    if not self.rollout_gathered or self.mesh.shape["fsdp"] == 1:
      return self
    def drop_fsdp(target):
      axes = tuple(a for a in ((target,) if isinstance(target, str) else target or ())
                   if a != "fsdp")
      return axes or None
    return dataclasses.replace(self, rules=tuple(
        (name, target if name == "batch" else drop_fsdp(target)) for name, target in self.rules))

  @property
  def batch_devices(self):
    return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

  def describe(self):
    return _shape_text(dict(self.mesh.shape))

  def spec(self, logical, shape):
    """PartitionSpec for an array of `shape` with logical axis names `logical`."""
    rules, used, out = dict(self.rules), set(), []
    for name, size in zip(logical, shape):
      target = rules.get(name)
      axes = (target,) if isinstance(target, str) else tuple(target or ())
      axes = tuple(a for a in axes if a not in used and self.mesh.shape[a] > 1)
      if not axes or size % math.prod(self.mesh.shape[a] for a in axes):
        out.append(None)
        continue
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    return P(*out)

  def sharding(self, logical, shape):
    return NamedSharding(self.mesh, self.spec(logical, shape))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def for_params(self, tree):
    """Shardings of a tree of weights, optimizer state or training state."""
    def one(path, x):
      axes = param_axes(path_text(path), np.ndim(x)) if np.ndim(x) else None
      return self.replicated if axes is None else self.sharding(axes, np.shape(x))
    return jax.tree_util.tree_map_with_path(one, tree)

  def for_batch(self, tree):
    """Rows over (data, fsdp); arrays whose rows the mesh does not divide, and
    scalars, replicated."""
    return jax.tree.map(
        lambda x: self.sharding(("batch",), np.shape(x)) if np.ndim(x) else self.replicated,
        tree)

  def abstract(self, tree, batch=False):
    """ShapeDtypeStructs of `tree` carrying the shardings put_params (or, with
    `batch`, put_batch) would give it: arguments for lower() that allocate nothing."""
    return abstract(tree, self.for_batch(tree) if batch else self.for_params(tree))

  def put_params(self, tree):
    return to_global(tree, self.for_params(tree))

  def put_batch(self, tree):
    """A global batch (the same on every host) -> global device arrays, rows over
    (data, fsdp) (to_global)."""
    return to_global(tree, self.for_batch(tree))

  def check_batch(self, key, rows):
    """`rows` (a config's batch size) must split evenly over the batch devices."""
    if rows % self.batch_devices:
      raise InputError(f"{key}={rows}: not divisible by the mesh's batch devices "
                       f"(data x fsdp = {self.batch_devices}, mesh {self.describe()})")

  @contextlib.contextmanager
  def active(self):
    """Activation constraints (`constrain`) apply to functions traced inside."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, self
    try:
      yield self
    finally:
      _ACTIVE = previous


_ACTIVE = None


def active():
  """The layout functions traced now run under (Layout.active), or None."""
  return _ACTIVE


def constrain(x, logical):
  """with_sharding_constraint by logical names, under the active layout (else x)."""
  layout = _ACTIVE
  if layout is None or layout.mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, layout.sharding(logical, x.shape))


def abstract(tree, shardings=None):
  """ShapeDtypeStructs of the arrays of `tree` (shardings: a matching tree, or
  None); Python scalars stay as they are."""
  if shardings is None:
    shardings = jax.tree.map(lambda _: None, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)
                      if hasattr(x, "dtype") else x, tree, shardings)


def to_global(tree, shardings):
  """Every transfer onto the mesh goes through here: a tree of values, the same on
  every host, -> global jax.Arrays with `shardings` (a matching tree), correct for
  any number of processes. Leaves may be
    arrays already on the mesh's devices (an earlier step's outputs): those whose
      sharding differs are moved on device, all of them by one program (one per
      weight put a hundred small collective programs in flight at once, which
      hung two-process CPU runs: docs/reliability.md, "Several hosts");
    numpy arrays: each host transfers only the parts its own devices hold;
    jax.Arrays on this process's devices alone (a jitted output, PRNG keys
      included): read back to the host, then as numpy;
    Python scalars: kept (jit takes them as they are)."""
  leaves, treedef = jax.tree.flatten(tree)
  targets = treedef.flatten_up_to(shardings)
  out = [_from_host(x, s) for x, s in zip(leaves, targets)]
  moves = [i for i, (x, s) in enumerate(zip(leaves, targets))
           if isinstance(x, jax.Array) and x.sharding.device_set == s.device_set
           and not (x.committed and x.sharding == s)]
  if moves:
    moved = _resharder(tuple(targets[i] for i in moves))(tuple(leaves[i] for i in moves))
    for i, x in zip(moves, moved):
      out[i] = x
  return treedef.unflatten(out)


@functools.lru_cache(maxsize=64)
def _resharder(targets):
  return jax.jit(lambda xs: xs, out_shardings=targets)


def _from_host(x, sharding):
  if not isinstance(x, (np.ndarray, np.generic, jax.Array)):
    return x
  if isinstance(x, jax.Array) and x.sharding.device_set == sharding.device_set:
    return x   # on the mesh already (to_global moves it where its sharding differs)
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _from_host(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x):
  """A (possibly multi-host) global array -> numpy on every host."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def peak_bytes(compiled):
  """Bytes one device holds while a compiled function runs: arguments + outputs +
  temporaries + its code - donated (aliased) buffers; None where XLA does not say."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes
             - memory.alias_size_in_bytes)


def single_device():
  """The layout of a run with no mesh config: the first device."""
  return Layout(jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES))
