"""Converting straight from the Hugging Face Hub, offline: the tests lay out a Hub
cache (HF_HOME/hub/models--ORG--NAME/{refs,snapshots}) themselves and set
HF_HUB_OFFLINE, so nothing is ever fetched."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("huggingface_hub")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gvu_jax.infra.errors import InputError  # noqa: E402
from gvu_jax.interop import convert  # noqa: E402
from gvu_jax.interop.convert import hub  # noqa: E402
from helpers_janus import ROOT                              # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("src, expected", [
    ("hf://deepseek-ai/Janus-Pro-1B", ("deepseek-ai/Janus-Pro-1B", None)),
    ("hf://deepseek-ai/Janus-Pro-1B@main", ("deepseek-ai/Janus-Pro-1B", "main")),
    ("X-Omni/X-Omni-En", ("X-Omni/X-Omni-En", None)),
    (f"org/name.v2@{COMMIT}", ("org/name.v2", COMMIT)),
    ("/ckpt/janus", None), ("./org/name", None), ("gs://bucket/janus", None),
    ("janus_pro_7b", None), ("a/b/c", None), ("tests", None),
])
def test_what_names_a_hub_repository(src, expected):
  assert hub.hub_repo(src) == expected


@pytest.mark.parametrize("src", ["hf://", "hf://org", "hf://org/name/extra", "hf://-org/name"])
def test_a_malformed_hub_name_is_one_line(src):
  with pytest.raises(InputError, match=r"expected hf://ORG/NAME\[@REVISION\]"):
    hub.hub_repo(src)


def test_an_existing_directory_wins_over_a_hub_name(tmp_path, monkeypatch):
  (tmp_path / "org" / "name").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert hub.resolve("org/name") == "org/name"


def hub_cache(home, repo, source):
  """`source`'s files as the Hub cache holds revision COMMIT of `repo` (main)."""
  folder = home / "hub" / f"models--{repo.replace('/', '--')}"
  shutil.copytree(source, folder / "snapshots" / COMMIT)
  (folder / "refs").mkdir()
  (folder / "refs" / "main").write_text(COMMIT)


def convert_command(src, dst, home):
  env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
  env.pop("HF_TOKEN", None)
  return subprocess.run([sys.executable, "-m", "gvu_jax.convert", f"--src={src}",
                         f"--dst={dst}", "--dtype=float32"], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=600)


@pytest.mark.slow
def test_a_hub_source_converts_as_its_local_copy_does(sources, converted, tmp_path):
  home = tmp_path / "hf_home"
  hub_cache(home, "tiny-org/tiny-janus", sources["transformers"])
  _, want = convert.load(str(converted["transformers"]), dtype="float32")
  for i, src in enumerate(["hf://tiny-org/tiny-janus", f"tiny-org/tiny-janus@{COMMIT}"]):
    proc = convert_command(src, tmp_path / f"dst{i}", home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, got = convert.load(str(tmp_path / f"dst{i}"), dtype="float32")
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
  proc = convert_command("hf://tiny-org/not-cached", tmp_path / "dst_missing", home)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
      "error: --src=hf://tiny-org/not-cached: cannot get tiny-org/not-cached from the Hugging "
      "Face Hub (HF_HUB_OFFLINE is set: only the local cache is read)")
  assert not (tmp_path / "dst_missing").exists()
