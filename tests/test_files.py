"""State files through crashes (gvu_jax/infra/files.py): an atomic write leaves the old
file or the new one, a JSON-lines file cut at any byte reads back as its whole
lines and takes the next append cleanly, and a damaged model_config.json is one
line."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvu_jax.infra import checkpoint, files
from gvu_jax.infra.errors import InputError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
records = st.lists(st.fixed_dictionaries(
    {"step": st.integers(0, 10**6), "x": st.floats(allow_nan=False, allow_infinity=False),
     "s": st.text(max_size=8)}), max_size=8)


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch, fail_in):
  path = str(tmp_path / "model_config.json")
  files.write_atomic(path, "old")

  def boom(*args, **kwargs):
    raise OSError(28, "No space left on device")

  target = {"write": "io.TextIOWrapper.write", "fsync": "os.fsync", "replace": "os.replace"}
  if fail_in == "write":
    import builtins
    real_open = builtins.open

    class Full:
      def __init__(self, f):
        self.f = f

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        self.f.close()

      def write(self, text):
        self.f.write(text[:2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Full(real_open(p, *a, **k))
                        if str(p).startswith(path + ".tmp") else real_open(p, *a, **k))
  else:
    monkeypatch.setattr(target[fail_in], boom)
  with pytest.raises(OSError):
    files.write_atomic(path, "new text")
  monkeypatch.undo()
  assert open(path).read() == "old" and os.listdir(tmp_path) == ["model_config.json"]


@SETTINGS
@given(lines=records, cut=st.integers(0, 10**4))
def test_a_jsonl_file_cut_at_any_byte_keeps_its_whole_lines(tmp_path, lines, cut):
  path = str(tmp_path / "metrics.jsonl")
  data = "".join(json.dumps(r) + "\n" for r in lines).encode()
  cut = min(cut, len(data))
  with open(path, "wb") as f:
    f.write(data[:cut])
  whole = data[:cut].count(b"\n")
  assert files.read_jsonl(path) == lines[:whole]
  with open(path, "a") as f:   # the next append starts a line of its own
    f.write(json.dumps({"step": -1}) + "\n")
  assert files.read_jsonl(path) == lines[:whole] + [{"step": -1}]


@SETTINGS
@given(steps=st.lists(st.integers(1, 9), max_size=8), resume=st.integers(0, 9))
def test_a_resumed_run_cuts_its_metrics_back_to_the_checkpoint(tmp_path, steps, resume):
  path = str(tmp_path / "metrics.jsonl")
  steps = sorted(steps)
  with open(path, "w") as f:
    f.writelines(json.dumps({"step": s}) + "\n" for s in steps)
  kept = files.read_jsonl(path, keep=lambda r: r["step"] <= resume)
  assert [r["step"] for r in kept] == [s for s in steps if s <= resume]
  assert files.read_jsonl(path) == kept


def test_a_malformed_whole_line_is_one_line_naming_it(tmp_path):
  path = tmp_path / "geneval_rewards.jsonl"
  path.write_text('{"index": 0}\n{"index": 1,,}\n{"index": 2}\n')
  with pytest.raises(InputError, match=rf"^{path}:2: not a JSON line"):
    files.read_jsonl(str(path))


@pytest.mark.parametrize("content", [b"", b'{"lm": {"hid', b"\xff\xfe"])
def test_a_damaged_model_config_is_one_line(tmp_path, content):
  (tmp_path / "model_config.json").write_bytes(content)
  with pytest.raises(InputError, match=r"model_config.json: damaged \(") as e:
    checkpoint.check_model_config(str(tmp_path), {"lm": {"hidden": 32}})
  assert "\n" not in str(e.value)
  assert (tmp_path / "model_config.json").read_bytes() == content
