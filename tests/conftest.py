import pytest

from helpers_run import run_main


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
