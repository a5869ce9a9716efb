"""The bad-input table (docs/reliability.md): every case runs the real command
line and must exit 2 with one stderr line naming the problem, leaving every
existing file (workdir, checkpoint, source) as it was.

A tiny X-Omni release is written here with numpy alone (safetensors, a
word-level tokenizer) and converted once; the prompt-data cases run GvU on it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers_run
import helpers_xomni
from gvu_jax.interop import convert
from gvu_jax.stages import pretrain

pytestmark = pytest.mark.slow   # every row runs the real command line
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"model_type": "x-omni", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
          "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
          "tie_word_embeddings": False, "mm_vocab_size": 24, "image_vocab_size": 16,
          "num_mm_adap_layers": 1, "num_mm_head_layers": 1}


def release_tensors():
  """X-Omni's tensor names and shapes for CONFIG, random float32."""
  m = convert.model_config_from_json(CONFIG)
  rng = np.random.default_rng(0)
  return {name: rng.normal(0, 0.2, t.shape).astype(np.float32)
          for name, t in convert.targets(m).items()}


def write_release(directory, tensors):
  helpers_xomni.write_release(directory, CONFIG, tensors, words=20)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  src = str(tmp_path_factory.mktemp("release") / "src")
  write_release(src, release_tensors())
  dst = str(tmp_path_factory.mktemp("release") / "dst")
  convert.convert(src, dst, dtype="float32", log=lambda *_: None)
  return src, dst


def snapshot(*directories):
  out = {}
  for directory in directories:
    for root, _, files in os.walk(directory):
      for name in files:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          out[path] = f.read()
  return out


MAIN = [sys.executable, "-m", "gvu_jax.main"]
MINI = MAIN + ["--config=configs/synthetic.py:mini"]
CONVERT = [sys.executable, "-m", "gvu_jax.convert"]


def xomni(dst, work, *extra):
  return MAIN + ["--config=configs/xomni_en.py", f"--config.checkpoint={dst}",
                 "--config.expect_model=any", "--config.model_options.image_grid=(2, 3)",
                 "--config.model_options.max_prompt_tokens=4",
                 "--config.model_options.dtype=float32", "--config.gvu.prompts_per_step=2",
                 f"--workdir={work}", *extra]


def prompts_file(work, name, content):
  path = os.path.join(work, name)
  with open(path, "wb") as f:
    f.write(content.encode() if isinstance(content, str) else content)
  return path


def gvu_on_prompt_file(name, content):
  """A table row's command: GvU on the tiny X-Omni with this prompt file."""
  return lambda w, s, d: (xomni(d, w, "--config.data.prompts=" + prompts_file(w, name, content)),
                          {})


def wrong_model_workdir(work):
  """A workdir whose pretraining checkpoint is of a wider model, otherwise as the
  mini recipe records it."""
  mini = helpers_run.recipe_config("synthetic", "mini")
  other = pretrain.checkpoint_signature(mini.model, mini.pretrain)
  other["lm"]["hidden"] = 48
  os.makedirs(os.path.join(work, "pretrain"))
  with open(os.path.join(work, "pretrain", "model_config.json"), "w") as f:
    json.dump(other, f)


def damaged_model_config(work):
  """What a full disk left before state files were written aside: a 0-byte file."""
  os.makedirs(os.path.join(work, "pretrain"))
  open(os.path.join(work, "pretrain", "model_config.json"), "w").close()


def source_variant(work, change):
  """A copy of the release with its tensors changed by `change(tensors)`."""
  tensors = release_tensors()
  change(tensors)
  write_release(os.path.join(work, "src2"), tensors)
  return os.path.join(work, "src2")


def sharded_without_second(work):
  src = source_variant(work, lambda t: None)
  os.rename(os.path.join(src, "model.safetensors"),
            os.path.join(src, "model-00001-of-00002.safetensors"))
  names = sorted(release_tensors())
  index = {"weight_map": {n: f"model-0000{1 + i % 2}-of-00002.safetensors"
                          for i, n in enumerate(names)}}
  with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f)
  return src


def truncated_release(work):
  """A copy of the release whose model.safetensors lost its second half."""
  src = source_variant(work, lambda t: None)
  path = os.path.join(src, "model.safetensors")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  return src


def no_weights(work):
  src = os.path.join(work, "src3")
  os.makedirs(src)
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(CONFIG, f)
  with open(os.path.join(src, "tokenizer.json"), "w") as f:
    f.write("{}")
  return src


# (case, command(work, src, dst) -> (argv, extra env), the error line's expected part)
CASES = [
    # config
    ("unknown config key", lambda w, s, d: (MINI + [f"--workdir={w}", "--config.pretrain.stepz=3"], {}),
     "--config.pretrain.stepz: unknown config key 'stepz'"),
    ("wrong value type", lambda w, s, d: (MINI + [f"--workdir={w}", "--config.seed=abc"], {}),
     "--config.seed"),
    ("unknown mode", lambda w, s, d: (MINI + [f"--workdir={w}", "--config.mode=train"], {}),
     "mode='train': expected one of ['all', 'pretrain', 'eval', 'gvu', 'bench']"),
    # every value checked before anything runs (once: after pretraining, a traceback,
    # a hang, or exit 0 having learned nothing)
    *[(f"config {flag}", lambda w, s, d, flag=flag: (MINI + [f"--workdir={w}", flag], {}), message)
      for flag, message in [
          ("--config.gvu.group_size=1", "gvu.group_size=1: expected an integer >= 2"),
          ("--config.pretrain.batch_size=0", "pretrain.batch_size=0: expected an integer >= 1"),
          ("--config.gvu.mu=0", "gvu.mu=0: expected an integer >= 1"),
          ("--config.model.dtype=float8", "model.dtype='float8': expected one of"),
          ("--config.seed=12345678901234567890", "seed=12345678901234567890: expected an integer"),
          ("--config.gvu.lr=nan", "gvu.lr=nan: expected a finite number > 0"),
          ("--config.gvu.sampling.cfg_weight=inf", "gvu.sampling.cfg_weight=inf: expected a finite"),
          ("--config.gvu.keep=0", "gvu.keep=0: expected an integer >= 1"),
      ]],
    ("damaged model_config.json", lambda w, s, d: (
        damaged_model_config(w) or MINI + [f"--workdir={w}", "--config.mode=pretrain"], {}),
     "model_config.json: damaged ("),
    ("mesh larger than the devices", lambda w, s, d: (
        MINI + [f"--workdir={w}", "--config.mesh.data=3"], {}),
     "mesh: data=3 fsdp=1 tensor=1 needs 3 devices, this run has 1"),
    ("batch not divisible by the mesh", lambda w, s, d: (
        MINI + [f"--workdir={w}", "--config.mesh.data=2", "--config.pretrain.batch_size=15"],
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
     "pretrain.batch_size=15: not divisible by the mesh's batch devices"),
    # command line
    ("unknown flag", lambda w, s, d: (MINI + [f"--workdir={w}", "--steps=3"], {}),
     "steps"),
    ("bad preset", lambda w, s, d: (MAIN + ["--config=configs/synthetic.py:huge", f"--workdir={w}"], {}),
     "unknown preset 'huge'"),
    ("missing config file", lambda w, s, d: (MAIN + ["--config=configs/nope.py", f"--workdir={w}"], {}),
     "--config=configs/nope.py: no such config file"),
    # checkpoints
    ("checkpoint of another model", lambda w, s, d: (
        wrong_model_workdir(w) or MINI + [f"--workdir={w}", "--config.mode=pretrain"], {}),
     "holds a checkpoint of a different model (lm.hidden: checkpoint has 48, config has 32)"),
    ("no checkpoint to evaluate", lambda w, s, d: (MINI + [f"--workdir={w}", "--config.mode=eval"], {}),
     "no finished pretraining checkpoint"),
    ("checkpoint not given", lambda w, s, d: (
        MAIN + ["--config=configs/xomni_en.py", f"--workdir={w}"], {}),
     "config.checkpoint is required"),
    ("not a conversion", lambda w, s, d: (xomni(s, w), {}),
     "not a finished gvu_jax conversion (no CONVERTED)"),
    ("conversion of another model", lambda w, s, d: (
        xomni(d, w, "--config.expect_model=xomni_en"), {}),
     "is not xomni_en: lm is"),
    ("full fine-tuning of a module the model lacks", lambda w, s, d: (
        xomni(d, w, "--config.data.prompts=" + prompts_file(w, "p.txt", "w1 w2\nw3\n"),
              "--config.gvu.lora.enabled=False",
              "--config.gvu.full_ft_modules=('lm', 'vision_tower')"), {}),
     "gvu.full_ft_modules: ['vision_tower'] not in the model"),
    # converter
    ("unknown stored dtype", lambda w, s, d: (
        CONVERT + [f"--src={s}", f"--dst={w}/out", "--dtype=float8"], {}),
     "--dtype=float8: expected 'auto' or one of ['float32', 'bfloat16', 'float16']"),
    ("non-empty destination", lambda w, s, d: (CONVERT + [f"--src={s}", f"--dst={d}"], {}),
     "exists; pass --force to replace it"),
    ("no weights in the source", lambda w, s, d: (
        CONVERT + [f"--src={no_weights(w)}", f"--dst={w}/out"], {}),
     "no checkpoint found (expected model*.safetensors or pytorch_model*.bin)"),
    ("missing shard", lambda w, s, d: (
        CONVERT + [f"--src={sharded_without_second(w)}", f"--dst={w}/out"], {}),
     "names model-00002-of-00002.safetensors, which is missing"),
    ("missing tensor", lambda w, s, d: (
        CONVERT + [f"--src={source_variant(w, lambda t: t.pop('model.mm_norm.weight'))}",
                   f"--dst={w}/out"], {}),
     "missing tensor model.mm_norm.weight"),
    ("tensor of the wrong shape", lambda w, s, d: (
        CONVERT + [f"--src={source_variant(w, lambda t: t.update({'mm_head.weight': t['mm_head.weight'][:-1]}))}",
                   f"--dst={w}/out"], {}),
     "tensor mm_head.weight has shape (23, 16), expected (24, 16)"),
    ("safetensors header past the end of the file", lambda w, s, d: (
        CONVERT + [f"--src={truncated_release(w)}", f"--dst={w}/out"], {}),
     "model.safetensors: not a readable safetensors file (Error while deserializing header: "
     "incomplete metadata, file not fully covered)"),
    ("tensor of the wrong dtype", lambda w, s, d: (
        CONVERT + [f"--src={source_variant(w, lambda t: t.update({'model.mm_norm.weight': np.ones(16, np.int32)}))}",
                   f"--dst={w}/out"], {}),
     "tensor model.mm_norm.weight has dtype int32, expected floating point"),
    # prompt data
    ("malformed jsonl line",
     gvu_on_prompt_file("p.jsonl", '{"prompt": "w1 w2"}\n{"prompt": "w3"\n'),
     "p.jsonl:2: not valid JSON"),
    ("prompt that is not text", gvu_on_prompt_file("p.jsonl", '{"prompt": "w1"}\n{"prompt": [1]}\n'),
     "p.jsonl:2: 'prompt' is a JSON array, expected a string"),
    ("empty prompt file", gvu_on_prompt_file("p.txt", "# nothing\n\n"),
     "p.txt: the file holds no prompts"),
    ("bytes that are not UTF-8", gvu_on_prompt_file("p.txt", b"w1 w2\nw3 caf\xe9\n"),
     "p.txt:2: not UTF-8 (byte 0xe9 at column 7)"),
    ("prompt longer than its room", gvu_on_prompt_file("p.txt", "w1\nw1 w2 w3 w4 w5\nw2\n"),
     "prompt id '1': prompt 'w1 w2 w3 w4 w5' is 5 tokens; the context leaves room for 4"),
    ("fewer prompts than one batch", gvu_on_prompt_file("p.txt", "w1 w2\n"),
     "holds 1 prompts, fewer than one batch (gvu.prompts_per_step=2)"),
    ("unknown prompt dataset", lambda w, s, d: (xomni(d, w, "--config.data.prompts=genevalplus"), {}),
     "prompts='genevalplus': expected a prompt file"),
]


@pytest.mark.parametrize("case, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(release, tmp_path, case, command,
                                                          expected):
  src, dst = release
  work = str(tmp_path / "work")
  os.makedirs(work)
  argv, env = command(work, src, dst)
  before = snapshot(work, src, dst)
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, **env))
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert expected in lines[0]
  assert snapshot(work, src, dst) == before
