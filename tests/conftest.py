import pytest

from helpers_run import run_main


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
  """The mini preset end to end on one device: (workdir, process)."""
  workdir = str(tmp_path_factory.mktemp("mini"))
  proc = run_main(workdir)
  return workdir, proc
