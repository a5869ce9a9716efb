"""The package as pip sees it: pyproject.toml and the requirements files say the
same, every console script names a function, and an editable install runs the
main command from another directory."""

import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest

from helpers_run import REPO


def _pyproject():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _requirements(name):
  """The requirement lines of a requirements file, without comments and -r lines."""
  with open(os.path.join(REPO, name)) as f:
    lines = [re.sub(r"#.*", "", line).strip() for line in f]
  return sorted(line for line in lines if line and not line.startswith("-r"))


def test_pyproject_declares_what_the_requirements_files_install():
  project = _pyproject()["project"]
  assert sorted(project["dependencies"]) == _requirements("requirements.txt")
  assert sorted(project["optional-dependencies"]["test"]) == _requirements(
      "requirements-test.txt")
  assert project["requires-python"] == ">=3.11"


@pytest.mark.parametrize("script", sorted(_pyproject()["project"]["scripts"]))
def test_each_console_script_names_a_function(script):
  module, function = _pyproject()["project"]["scripts"][script].split(":")
  assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.slow
def test_an_editable_install_runs_from_another_directory(tmp_path):
  venv = tmp_path / "venv"
  # A venv that sees this environment's packages (and its setuptools: none of
  # its own), gvu_jax installed into it with this environment's pip, offline.
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                  str(venv)], check=True)
  python = venv / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                  "--no-build-isolation", "--no-index", "-e", REPO], check=True, cwd=tmp_path)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  config = os.path.join(REPO, "configs", "synthetic.py")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  for command in ([python, "-m", "gvu_jax.main"], [venv / "bin" / "gvu-jax"]):
    workdir = tmp_path / f"run_{len(str(command))}"
    proc = subprocess.run([*command, f"--config={config}:mini", f"--workdir={workdir}",
                           "--config.mode=pretrain", "--config.pretrain.steps=6",
                           "--config.pretrain.checkpoint_every=6"],
                          cwd=elsewhere, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (workdir / "pretrain" / "run.json").exists()
  assert not any(elsewhere.iterdir())   # nothing written to the working directory
