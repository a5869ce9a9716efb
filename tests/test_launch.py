"""launch/: the TPU, pod and GPU launchers (through --dry-run, with fake tools on PATH)
and the Colab notebook's structure. No network, gcloud or accelerator needed."""

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
BASH = shutil.which("bash")
SCRIPTS = ("tpu_vm.sh", "tpu_pod.sh", "gpu.sh")
# Every command with effects the launchers may start; each fake records its call.
FAKED = ("gcloud", "ssh", "scp", "tar", "git", "mkdir", "env", "pip", "python", "python3")
FAKE = """#!/bin/sh
printf '%s\\n' "${0##*/} $*" >> "$GVU_TEST_MARKER"
case "${0##*/} $*" in *"$GVU_TEST_FAIL_ON"*) [ -n "$GVU_TEST_FAIL_ON" ] && exit 1;; esac
exit 0
"""
TPU = ("--name=my-tpu", "--zone=us-central2-b", "--type=v5litepod-8",
       "--version=v2-alpha-tpuv5-lite")
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_CMD = ("cd gvu_jax && set -o pipefail && .venv/bin/python -m gvu_jax.main "
           "--config=configs/synthetic.py:mini --workdir=gvu_workdir --config.seed=1 'a b' "
           "2>&1 | tee gvu_run.log")


@pytest.fixture
def sandbox(tmp_path):
  """Environment with fakes first on PATH, no launcher variables, TMPDIR in tmp_path."""
  fake_bin = tmp_path / "fake_bin"
  fake_bin.mkdir()
  for name in FAKED:
    path = fake_bin / name
    path.write_text(FAKE)
    path.chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TPU_", "GVU_")) and k not in ("GCP_PROJECT", "CUDA_VISIBLE_DEVICES")}
  env.update(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
             PWD=str(tmp_path), GVU_TEST_MARKER=str(tmp_path / "marker"))
  return tmp_path, env


def launch(sandbox, script, *args, **extra_env):
  tmp_path, env = sandbox
  return subprocess.run([BASH, str(LAUNCH / script), *args], cwd=tmp_path, env={**env, **extra_env},
                        capture_output=True, text=True, timeout=30)


def executed(sandbox):
  marker = sandbox[0] / "marker"
  return marker.read_text().splitlines() if marker.exists() else []


def dry(sandbox, script, *args, **extra_env):
  """The commands a --dry-run prints, each as its argv; asserts nothing ran."""
  proc = launch(sandbox, script, "--dry-run", *args, **extra_env)
  assert proc.returncode == 0, proc.stderr
  assert executed(sandbox) == [], "--dry-run executed a command"
  lines = proc.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
  return [shlex.split(line[2:]) for line in lines]


def remote(argv):
  """The --command=... of a gcloud ssh argv."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]


def remote_or_empty(argv):
  return remote(argv) if any(a.startswith("--command=") for a in argv) else ""


def test_tpu_create_has_zone_type_version(sandbox):
  assert dry(sandbox, "tpu_vm.sh", "create", *TPU) == [
      GCLOUD + ["create", "my-tpu", "--zone=us-central2-b", "--accelerator-type=v5litepod-8",
                "--version=v2-alpha-tpuv5-lite"]]
  # --flag value form, project, spot
  assert dry(sandbox, "tpu_vm.sh", "create", "--name", "my-tpu", "--zone", "us-central2-b",
             "--type", "v5litepod-8", "--version", "v2-alpha-tpuv5-lite",
             "--project", "my-project", "--spot") == [
      GCLOUD + ["create", "my-tpu", "--zone=us-central2-b", "--project=my-project",
                "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite", "--spot"]]


def test_tpu_environment_fallbacks(sandbox):
  cmds = dry(sandbox, "tpu_vm.sh", "create", TPU_NAME="env-tpu", TPU_ZONE="europe-west4-a",
             TPU_TYPE="v5litepod-8", TPU_VERSION="v2-alpha-tpuv5-lite", GCP_PROJECT="env-project")
  assert cmds == [GCLOUD + ["create", "env-tpu", "--zone=europe-west4-a", "--project=env-project",
                            "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]]
  # a flag wins over its variable
  cmds = dry(sandbox, "tpu_vm.sh", "delete", "--zone=us-east5-a", TPU_NAME="env-tpu",
             TPU_ZONE="europe-west4-a")
  assert cmds == [GCLOUD + ["delete", "env-tpu", "--zone=us-east5-a", "--quiet"]]


def test_tpu_vm_all(sandbox):
  tmp_path, _ = sandbox
  cmds = dry(sandbox, "tpu_vm.sh", "all", *TPU, "--config=configs/synthetic.py:mini",
             "--", "--config.seed=1", "a b")
  where = ["--zone=us-central2-b"]
  assert cmds[0] == GCLOUD + ["create", "my-tpu", *where, "--accelerator-type=v5litepod-8",
                              "--version=v2-alpha-tpuv5-lite"]
  tarball = str(tmp_path / "gvu_jax_src.tgz")
  assert cmds[1][:5] == ["tar", "-C", str(ROOT), "-czf", tarball]
  assert "--exclude=.git" in cmds[1] and cmds[1][-1] == "."
  assert cmds[2] == GCLOUD + ["scp", tarball, "my-tpu:gvu_jax_src.tgz", *where]
  assert cmds[3][:-1] == GCLOUD + ["ssh", "my-tpu", *where]
  setup = remote(cmds[3])
  assert setup.startswith("mkdir -p gvu_jax && tar -xzf gvu_jax_src.tgz -C gvu_jax && ")
  assert "python3 -m uv venv --python 3.11 .venv" in setup
  assert setup.endswith(' -r requirements.txt "jax[tpu]"')
  assert cmds[4] == GCLOUD + ["ssh", "my-tpu", *where, "--command=" + RUN_CMD]
  main = shlex.split(remote(cmds[4]))
  assert main[main.index("gvu_jax.main") + 1:main.index("2>&1")] == [
      "--config=configs/synthetic.py:mini", "--workdir=gvu_workdir", "--config.seed=1", "a b"]
  assert cmds[5] == ["mkdir", "-p", "tpu_logs/my-tpu"]
  assert "--exclude=checkpoints" in remote(cmds[6]) and "-C gvu_workdir ." in remote(cmds[6])
  assert cmds[7] == GCLOUD + ["scp", "my-tpu:gvu_logs.tgz", "tpu_logs/my-tpu/gvu_logs.tgz", *where]
  assert cmds[8] == ["tar", "-xzf", "tpu_logs/my-tpu/gvu_logs.tgz", "-C", "tpu_logs/my-tpu"]
  assert cmds[9:] == [GCLOUD + ["delete", "my-tpu", *where, "--quiet"]]
  assert not any(a.startswith("--worker") for cmd in cmds for a in cmd)


@pytest.mark.parametrize("script", ["tpu_vm.sh", "tpu_pod.sh"])
def test_tpu_check_compiles_for_the_slice_here_before_renting(sandbox, script):
  """`check` needs no TPU, name or zone: the run's programs compiled here for the
  slice by the TPU compiler (mode=bench with bench.topology), nothing on gcloud."""
  cmds = dry(sandbox, script, "check", "--topology=v5e:2x4",
             "--config=configs/janus_pro_7b.py:lora", "--", "--config.gvu.group_size=8")
  assert cmds == [["env", "JAX_PLATFORMS=cpu", f"PYTHONPATH={ROOT}", "python3", "-m",
                   "gvu_jax.main", f"--config={ROOT}/configs/janus_pro_7b.py:lora",
                   "--config.mode=bench", "--config.bench.topology=v5e:2x4",
                   "--workdir=tpu_logs/check_v5e_2x4", "--config.gvu.group_size=8"]]


def test_tpu_setup_from_git_and_explicit_python(sandbox):
  (cmd,) = dry(sandbox, "tpu_vm.sh", "setup", "--name=my-tpu", "--zone=us-central2-b",
               "--repo=https://example.com/me/gvu_jax.git", "--python=python3.11")
  assert remote(cmd) == (
      "if [ -d gvu_jax/.git ]; then git -C gvu_jax pull --ff-only; "
      "else git clone https://example.com/me/gvu_jax.git gvu_jax; fi && cd gvu_jax && "
      'python3.11 -m pip install -r requirements.txt "jax[tpu]"')
  (cmd,) = dry(sandbox, "tpu_vm.sh", "run", "--name=my-tpu", "--zone=us-central2-b",
               "--python=python3.11")
  assert remote(cmd).startswith("cd gvu_jax && set -o pipefail && python3.11 -m gvu_jax.main ")


def test_tpu_pod_runs_everywhere_and_logs_from_worker_0(sandbox):
  cmds = dry(sandbox, "tpu_pod.sh", "all", *TPU, "--config=configs/synthetic.py:mini",
             "--", "--config.seed=1", "a b")
  for cmd in cmds:
    if cmd[:4] != GCLOUD:
      continue
    workers = [a for a in cmd if a.startswith("--worker")]
    if cmd[4] in ("create", "delete"):
      assert workers == []
    elif "my-tpu:gvu_logs.tgz" in cmd or "gvu_logs.tgz" in remote_or_empty(cmd):  # logs
      assert workers == ["--worker=0"], cmd
    else:
      assert workers == ["--worker=all"], cmd
  run = [c for c in cmds if c[4:5] == ["ssh"] and "gvu_jax.main" in remote(c)]
  assert run == [GCLOUD + ["ssh", "my-tpu", "--zone=us-central2-b", "--worker=all",
                           "--command=" + RUN_CMD]]
  assert cmds[-1] == GCLOUD + ["delete", "my-tpu", "--zone=us-central2-b", "--quiet"]


def test_tpu_pod_gs_workdir_logs(sandbox):
  cmds = dry(sandbox, "tpu_pod.sh", "logs", "--name=my-pod", "--zone=us-central2-b",
             "--project=my-project", "--workdir=gs://my-bucket/runs/gvu")
  assert cmds == [
      ["mkdir", "-p", "tpu_logs/my-pod"],
      GCLOUD + ["scp", "my-pod:gvu_jax/gvu_run.log", "tpu_logs/my-pod/gvu_run.log",
                "--zone=us-central2-b", "--project=my-project", "--worker=0"],
      ["gcloud", "storage", "rsync", "--recursive", "--exclude=(^|.*/)(checkpoints|reference)/.*",
       "--project=my-project", "gs://my-bucket/runs/gvu", "tpu_logs/my-pod"]]


def test_gpu_run(sandbox):
  tmp_path, _ = sandbox
  assert dry(sandbox, "gpu.sh", "run", "--gpus=4", "--", "--config.seed=3", "a b") == [
      ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "python3", "-m", "gvu_jax.main",
       "--config=configs/synthetic.py", f"--workdir={tmp_path}/gvu_workdir",
       "--config.mesh.data=-1", "--config.seed=3", "a b"]]
  # the user's mesh replaces the default one; no --gpus: every visible GPU
  assert dry(sandbox, "gpu.sh", "run", "--workdir=/scratch/gvu", "--config=configs/janus_pro_7b.py:lora",
             "--", "--config.mesh.data=1", "--config.mesh.fsdp=-1") == [
      ["python3", "-m", "gvu_jax.main", "--config=configs/janus_pro_7b.py:lora",
       "--workdir=/scratch/gvu", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]]


def test_gpu_over_ssh(sandbox):
  tmp_path, _ = sandbox
  assert dry(sandbox, "gpu.sh", "run", "--host=me@gpu-node", "--gpus", "2", "--",
             "--config.seed=1") == [
      ["ssh", "me@gpu-node", "cd gvu_jax && CUDA_VISIBLE_DEVICES=0,1 python3 -m gvu_jax.main "
       "--config=configs/synthetic.py --workdir=gvu_workdir --config.mesh.data=-1 --config.seed=1"]]
  cmds = dry(sandbox, "gpu.sh", "setup", "--host=me@gpu-node")
  assert cmds[0][:5] == ["tar", "-C", str(ROOT), "-czf", str(tmp_path / "gvu_jax_src.tgz")]
  assert cmds[1:] == [
      ["scp", str(tmp_path / "gvu_jax_src.tgz"), "me@gpu-node:gvu_jax_src.tgz"],
      ["ssh", "me@gpu-node", "mkdir -p gvu_jax && tar -xzf gvu_jax_src.tgz -C gvu_jax && "
       'rm -f gvu_jax_src.tgz && cd gvu_jax && python3 -m pip install -r requirements.txt "jax[cuda12]"']]


def test_gpu_setup_here(sandbox):
  assert dry(sandbox, "gpu.sh", "setup") == [
      ["python3", "-m", "pip", "install", "-r", str(ROOT / "requirements.txt"), "jax[cuda12]"]]


@pytest.mark.parametrize("script, args, message", [
    ("tpu_vm.sh", ("create", "--name=my-tpu", "--type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"),
     "error: --zone (or TPU_ZONE) is required"),
    ("tpu_vm.sh", ("create", "--name=my-tpu", "--zone=us-central2-b"),
     "error: --type (or TPU_TYPE) is required"),
    ("tpu_vm.sh", ("all", "--name=my-tpu", "--zone=us-central2-b", "--type=v5litepod-8"),
     "error: --version (or TPU_VERSION) is required"),
    ("tpu_pod.sh", ("run", "--zone=us-central2-b"), "error: --name (or TPU_NAME) is required"),
    ("tpu_vm.sh", ("--name=my-tpu", "--zone=us-central2-b"),
     "error: a subcommand is required: check, create, setup, run, logs, delete or all (see --help)"),
    ("tpu_vm.sh", ("check", "--config=configs/janus_pro_7b.py:lora"),
     "error: --topology (or GVU_TOPOLOGY) is required"),
    ("tpu_vm.sh", ("run", "--name=my-tpu", "--zone=us-central2-b", "--nope=1"),
     "error: unknown flag --nope (see --help)"),
    ("tpu_vm.sh", ("delete", "--name=my-tpu", "--zone=us-central2-b", "--", "--config.seed=1"),
     "error: arguments after -- go to gvu_jax.main: only for check, run and all"),
    ("gpu.sh", ("run", "--gpus=two"), "error: --gpus must be a positive integer, got 'two'"),
    ("gpu.sh", ("launch",), "error: unknown subcommand launch: expected setup or run"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_bad_input_is_one_line_and_exit_2(sandbox, script, args, message, dry_run):
  proc = launch(sandbox, script, *(("--dry-run",) if dry_run else ()), *args)
  assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message + "\n")
  assert executed(sandbox) == []


def test_fakes_do_catch_real_runs(sandbox):
  """Without --dry-run the commands run (here: the fakes, which record themselves)."""
  proc = launch(sandbox, "tpu_vm.sh", "delete", "--name=my-tpu", "--zone=us-central2-b")
  assert proc.returncode == 0, proc.stderr
  assert executed(sandbox) == ["gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet"]
  assert proc.stderr.startswith("+ gcloud compute tpus tpu-vm delete my-tpu")


def test_all_deletes_after_a_failed_run_but_not_after_a_failed_create(sandbox):
  proc = launch(sandbox, "tpu_vm.sh", "all", *TPU, GVU_TEST_FAIL_ON="gvu_jax.main")
  assert proc.returncode == 1
  calls = executed(sandbox)
  assert any("gvu_jax.main" in c for c in calls)
  assert any("gvu_logs.tgz" in c for c in calls)  # the logs are still fetched
  assert calls[-1] == "gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet"

  (sandbox[0] / "marker").unlink()
  proc = launch(sandbox, "tpu_vm.sh", "all", *TPU, GVU_TEST_FAIL_ON="tpu-vm create")
  assert proc.returncode == 1
  assert [c.split()[:5] for c in executed(sandbox)] == [GCLOUD + ["create"]]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(sandbox, script):
  proc = launch(sandbox, script, "--help")
  assert proc.returncode == 0 and proc.stdout.startswith(f"Usage: {script} SUBCOMMAND")
  assert "--dry-run" in proc.stdout
  assert executed(sandbox) == []


def test_scripts_parse_and_are_executable():
  for name in (*SCRIPTS, "common.sh"):
    path = LAUNCH / name
    subprocess.run([BASH, "-n", str(path)], check=True)
    if name != "common.sh":
      assert os.access(path, os.X_OK), f"{name} is not executable"
    text = path.read_text()
    assert "set -euo pipefail" in text or name == "common.sh"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
  proc = subprocess.run(["shellcheck", "-x", *SCRIPTS, "common.sh"], cwd=LAUNCH,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_colab_notebook():
  nb = json.loads((LAUNCH / "colab_tpu.ipynb").read_text())
  assert nb["nbformat"] == 4 and isinstance(nb["metadata"], dict)
  cells = nb["cells"]
  assert cells[0]["cell_type"] == "markdown"
  sources = {}
  for cell in cells:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
    text = "".join(cell["source"])
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, "outputs saved"
      # Python once the shell lines (IPython's `!cmd`) are taken out
      compile("\n".join("pass" if ln.lstrip().startswith("!") else ln
                        for ln in text.splitlines()), cell.get("id", "cell"), "exec")
      sources[cell.get("id")] = text
  code = list(sources.values())
  (run,) = [s for s in code if "\n!python -m gvu_jax.main" in "\n" + s]
  assert "!python -m gvu_jax.main --config=configs/synthetic.py --workdir=" in run
  assert 'WORKDIR = "/content/gvu"' in run and "configs/synthetic.py:mini" in run
  for line in run.splitlines():
    for word in line.split():
      if word.startswith("--config=configs/"):
        assert (ROOT / word.split("=", 1)[1].split(":")[0]).is_file(), word
  assert any('REPO_URL = ""' in s and "git" in s and "raise RuntimeError" in s for s in code)
  assert any("pip" in s and "requirements.txt" in s for s in code)
  assert any("jax.devices()" in s for s in code)
  (show,) = [s for s in code if "IPython.display" in s]
  for needle in ("**", "*.png", "'pretrained'", "'gvu'", "Image(", "Markdown(", "report.md"):
    assert needle.replace("'", '"') in show, needle
  try:
    import nbformat  # optional: the full schema when it is installed
  except ImportError:
    return
  nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
