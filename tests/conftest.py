import os
import shutil
import tempfile

# The tests run on this host's CPU. With the TPU compiler installed (the [tpu] extra,
# for tests/test_topology.py) jax would look for a TPU first and libtpu would print a
# page of warnings into every process's stderr, which tests read.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from helpers_run import run_main


def pytest_configure(config):
  """One XLA compilation cache for the session, shared by the test processes
  (pytest-xdist's workers inherit it) and every command they run: the end-to-end
  tests compile the same programs again and again (the mini preset's run takes
  65 s with an empty cache, 26 s with a warm one, the same report)."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    config.xla_cache = tempfile.mkdtemp(prefix="gvu_jax_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.xla_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
  if getattr(config, "xla_cache", None):
    shutil.rmtree(config.xla_cache, ignore_errors=True)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
  """The mini preset end to end on one device: (workdir, process)."""
  workdir = str(tmp_path_factory.mktemp("mini"))
  proc = run_main(workdir)
  return workdir, proc


# Tiny Janus checkpoints (tests/helpers_janus.py), built once per test file that
# uses them; torch and transformers are imported only then.
@pytest.fixture(scope="module")
def hf():
  import helpers_janus
  return helpers_janus.tiny_transformers_model()


@pytest.fixture(scope="module")
def sources(hf, tmp_path_factory):
  import helpers_janus
  return helpers_janus.build_sources(hf, tmp_path_factory.mktemp("janus_src"))


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
  import helpers_janus
  return helpers_janus.convert_all(sources, lambda: tmp_path_factory.mktemp("janus_dst"))
