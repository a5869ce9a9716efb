"""Malformed checkpoint files (property-based): whatever a damaged or hostile
safetensors file, config.json or weight index holds, the converter either reads
it correctly or stops with one InputError line naming the file, never another
exception and never a read past the end of the file."""

import json

import numpy as np
import pytest
import safetensors.numpy
from etils import epath
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvu_jax.infra.errors import InputError
from gvu_jax.interop import convert
from test_bad_inputs import CONFIG   # a tiny X-Omni config.json

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
TENSORS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
           "b": np.ones((4,), np.float16), "c": np.zeros((0, 5), np.float32)}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3), max_leaves=6)


def valid_file():
  return safetensors.numpy.save(TENSORS)


def read_all(tmp_path, data):
  path = tmp_path / "model.safetensors"
  path.write_bytes(data)
  return dict(convert.read_shard(epath.Path(path)))


def assert_read_or_one_line(tmp_path, data, name="model.safetensors"):
  try:
    tensors = read_all(tmp_path, data)
  except InputError as e:
    assert str(e).startswith(str(tmp_path / name)) and "\n" not in str(e)
    return None
  return tensors


def test_a_valid_file_reads_back():
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    got = read_all(epath.Path(d), valid_file())
  assert sorted(got) == sorted(TENSORS)
  for k, v in TENSORS.items():
    np.testing.assert_array_equal(got[k], v)


@SETTINGS
@given(cut=st.integers(0, 400))
def test_a_truncated_file_is_one_line(tmp_path, cut):
  data = valid_file()
  got = assert_read_or_one_line(tmp_path, data[:cut])
  assert got is None or cut >= len(data)


@pytest.mark.parametrize("delta", [-8, -7, -3, -1, 1, 2, 8])
def test_a_header_size_off_by_its_padding_is_refused(tmp_path, delta):
  """The header is padded with spaces to 8 bytes, so a size a few bytes short
  still parses as JSON: the tensors then no longer tile the data, and that is
  refused rather than read shifted."""
  data = valid_file()
  size = int.from_bytes(data[:8], "little") + delta
  with pytest.raises(InputError, match="model.safetensors: "):
    read_all(tmp_path, size.to_bytes(8, "little") + data[8:])


@SETTINGS
@given(size=st.integers(0, 2**64 - 1))
def test_any_header_size_is_one_line_or_the_real_one(tmp_path, size):
  data = valid_file()
  real = int.from_bytes(data[:8], "little")
  got = assert_read_or_one_line(tmp_path, size.to_bytes(8, "little") + data[8:])
  assert got is None or size == real


@SETTINGS
@given(tensor=st.sampled_from(sorted(TENSORS)),
       field=st.sampled_from(["dtype", "shape", "data_offsets", None]), value=json_values)
def test_any_header_entry_is_read_right_or_refused(tmp_path, tensor, field, value):
  """Replace one header field (or a whole entry) by any JSON value: the file is
  refused in one line, or it still describes the tensors and reads them exactly."""
  data = valid_file()
  size = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + size])
  if field is None:
    header[tensor] = value
  else:
    header[tensor][field] = value
  text = json.dumps(header).encode()
  got = assert_read_or_one_line(tmp_path, len(text).to_bytes(8, "little") + text
                                + data[8 + size:])
  if got is not None:   # consistent by chance: every byte accounted for
    for name, array in got.items():
      assert array.nbytes == np.prod(array.shape) * array.dtype.itemsize


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"x"', "null", "{", "\xff"])
def test_a_config_json_that_is_no_object_is_one_line(tmp_path, text):
  (tmp_path / "config.json").write_text(text, encoding="latin-1")
  with pytest.raises(InputError, match=f"{tmp_path / 'config.json'}: ") as e:
    convert.read_model_config(epath.Path(tmp_path))
  assert "\n" not in str(e.value)


def key_paths(d, prefix=()):
  for k, v in d.items():
    yield prefix + (k,)
    if isinstance(v, dict):
      yield from key_paths(v, prefix + (k,))


@SETTINGS
@given(data=st.data())
def test_any_config_field_of_another_kind_is_one_line(tmp_path, data):
  """One field of a valid config.json replaced by any JSON value: a config, or one
  line naming the file."""
  cfg = json.loads(json.dumps(CONFIG))
  where = data.draw(st.sampled_from(list(key_paths(cfg))))
  node = cfg
  for k in where[:-1]:
    node = node[k]
  node[where[-1]] = data.draw(json_values)
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  try:
    convert.read_model_config(epath.Path(tmp_path))
  except InputError as e:
    assert str(e).startswith(str(tmp_path / "config.json")) and "\n" not in str(e)


@pytest.mark.parametrize("index, message", [
    ("[]", "holds a JSON list, expected an object"),
    ('{"weight_map": []}', "not a weight index"),
    ('{"weight_map": {"a": 3}}', "not a weight index"),
    ('{"weight_map": {"a": "../model.safetensors"}}', "not a file name in"),
    ('{"weight_map": {"a": "nope.safetensors"}}', "names nope.safetensors, which is missing"),
])
def test_a_malformed_weight_index_is_one_line(tmp_path, index, message):
  (tmp_path / "model.safetensors.index.json").write_text(index)
  with pytest.raises(InputError, match=message) as e:
    convert.find_shards(epath.Path(tmp_path))
  assert "\n" not in str(e.value)
