"""Understanding benchmarks on a converted Janus (evaluation/understanding.py):
each question's option log-probabilities equal transformers' own Janus (its
processor and forward) on the same question and image; the main command scores
every suite, writes what it says and resumes per suite."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import helpers_janus  # noqa: E402
from gvu_jax.data.suites import Question  # noqa: E402
from gvu_jax.evaluation import suite_scores, understanding  # noqa: E402
from gvu_jax.infra.errors import InputError  # noqa: E402
from gvu_jax.interop import convert  # noqa: E402
from gvu_jax.text import janus as jt  # noqa: E402

ANSWER_WORDS = {"w10": "Yes", "w11": "No", "w12": "A", "w13": "B", "w14": "C", "w15": "D",
                "w16": "yes"}
PREPROCESSOR = {"image_size": 16, "min_size": 4, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5]}
IMAGE_TOKENS = 16   # the tiny model's (16 / 4)^2 patches


def write_source(hf, directory):
  """The tiny transformers Janus with a tokenizer that has the answer words."""
  hf.save_pretrained(directory)
  helpers_janus.write_tokenizer(directory)
  path = directory / "tokenizer.json"
  raw = json.loads(path.read_text())
  vocab = raw["model"]["vocab"]
  for old, new in ANSWER_WORDS.items():
    vocab[new] = vocab.pop(old)
  path.write_text(json.dumps(raw))
  (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))


@pytest.fixture(scope="module")
def janus(hf, tmp_path_factory):
  src = tmp_path_factory.mktemp("understanding_src")
  write_source(hf, src)
  dst = tmp_path_factory.mktemp("understanding_dst") / "converted"
  convert.convert(str(src), str(dst), dtype="float32", log=lambda *_: None)
  return src, dst


def images(directory, sizes):
  rng = np.random.default_rng(0)
  paths = []
  for i, (h, w) in enumerate(sizes):
    paths.append(str(directory / f"im{i}.png"))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(paths[-1])
  return paths


def question(i, image, text, options=(), answer="yes"):
  return Question("test", "test", str(i), image, text, tuple(options), answer, "g", image, f"q:{i}")


def transformers_logprobs(hf, tokenizer, q, option_ids):
  """The oracle: transformers' JanusProcessor builds the chat (its default system
  prompt, the image expanded) and JanusForConditionalGeneration reads the answer
  position; one question at a time, no padding."""
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token=jt.BOS, eos_token=jt.EOS, pad_token=jt.PAD,
      extra_special_tokens={"image_token": jt.IMG, "boi_token": jt.BOI, "eoi_token": jt.EOI})
  proc = transformers.JanusProcessor(
      transformers.JanusImageProcessorPil(size={"height": 16, "width": 16}, min_size=4,
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3),
      hf_tok, use_default_system_prompt=True, num_image_tokens=IMAGE_TOKENS)
  text = f"<|User|>: {jt.IMG}\n{understanding.question_text(q)}\n\n<|Assistant|>:"
  out = proc(text=[text], images=[Image.open(q.image).convert("RGB")], return_tensors="pt")
  ids = torch.cat([torch.tensor([[tokenizer.token_to_id(jt.BOS)]]), out["input_ids"]], 1)
  with torch.no_grad():
    logits = hf(input_ids=ids, pixel_values=out["pixel_values"]).logits[0, -1]
  logp = torch.log_softmax(logits.double(), -1).numpy()
  return np.array([np.logaddexp.reduce(logp[row]) for row in option_ids]), ids[0].tolist()


def test_answers_are_transformers_janus_own(janus, hf, tmp_path):
  """Yes/no and multiple-choice questions on images of several shapes, batched
  and left-padded: every option's log-probability equals transformers' Janus on
  the question alone, and so does the chosen answer."""
  src, dst = janus
  tokenizer = jt.load_tokenizer(str(dst))
  templates = jt.JanusTemplates(tokenizer, image_tokens=IMAGE_TOKENS)
  model = helpers_janus.load_model(dst)
  from flax import nnx
  graphdef, params = nnx.split(model)
  paths = images(tmp_path, [(16, 16), (40, 70), (90, 30)])
  groups = {
      "yes/no": ([question(0, paths[0], "w5 w6 w7?"),
                  question(1, paths[1], "w8 w9? Please answer yes or no.", answer="no"),
                  question(2, paths[2], "w20")], understanding.YES_NO_WORDS),
      "choice": ([question(3, paths[1], "w5 w8?", ["w20 w21", "w22", "w23 w24 w25", "w26"], "C"),
                  question(4, paths[2], "w9", ["w30", "w31", "w32", "w33"], "A")],
                 [(l,) for l in "ABCD"])}
  for name, (qs, words) in groups.items():
    table, mask = understanding.answer_table(tokenizer, words)
    option_ids = [row[m] for row, m in zip(table, mask)]
    scorer = understanding.make_scorer(graphdef, table, mask)
    texts = [understanding.question_text(q) for q in qs]
    length = max(templates.question_tokens(t) for t in texts) + 3   # padding on the left
    ids, valid, slots = templates.question(texts, length)
    pixels = jt.preprocess([Image.open(q.image) for q in qs], PREPROCESSOR | {
        "rescale_factor": 1 / 255, "do_rescale": True, "do_normalize": True})
    ours = np.asarray(scorer(params, ids, valid, slots, pixels))
    for b, q in enumerate(qs):
      want, oracle_ids = transformers_logprobs(hf, tokenizer, q, option_ids)
      assert ids[b, valid[b]].tolist() == oracle_ids, name     # the processor's own chat
      np.testing.assert_allclose(ours[b], want, atol=2e-5, err_msg=name)
    assert understanding.answers(qs, ours) == understanding.answers(
        qs, np.stack([transformers_logprobs(hf, tokenizer, q, option_ids)[0] for q in qs]))
  # "yes" and "Yes" are both one token: the yes option is their summed probability
  table, mask = understanding.answer_table(tokenizer, understanding.YES_NO_WORDS)
  assert sorted(table[0][mask[0]]) == sorted(tokenizer.token_to_id(w) for w in ("Yes", "yes"))


def test_an_answer_word_that_is_no_token_is_one_line(tmp_path):
  helpers_janus.write_tokenizer(tmp_path)   # words w0, w1, ...: no "Yes"
  with pytest.raises(InputError, match=r"^the tokenizer has no single token for the answer "
                                       r"'Yes' \(nor 'yes'\); its answers cannot be read$"):
    understanding.answer_table(jt.load_tokenizer(str(tmp_path)), understanding.YES_NO_WORDS)


@pytest.mark.parametrize("logprobs, options, expected", [
    ([[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.0]], 0, ["yes", "no", "yes"]),   # a tie: the first
    ([[-4.0, -3.0, -2.0, -9.0], [-1.0, -1.0, -5.0, -5.0]], 4, ["C", "A"]),
])
def test_the_answer_is_the_most_likely_option(logprobs, options, expected):
  qs = [question(i, "x", "q", [f"o{k}" for k in range(options)]) for i in range(len(logprobs))]
  assert understanding.answers(qs, np.array(logprobs)) == expected


def test_question_text_is_the_protocol():
  assert understanding.question_text(question(0, "x", " Is there a cat? ")) == (
      "Is there a cat? Please answer yes or no.")
  assert understanding.question_text(question(0, "x", "Is it red? Please answer yes or no.")) == (
      "Is it red? Please answer yes or no.")
  assert understanding.question_text(question(0, "x", "Which?", ["a cat", "a dog"], "A")) == (
      "Which?\nA. a cat\nB. a dog\nAnswer with the option's letter from the given choices "
      "directly.")


def test_the_summary_has_each_stage_and_their_difference():
  qs = [question(0, "x", "q"), question(1, "x", "q", answer="no")]
  results = {("base", "pope"): suite_scores.pope(qs, ["yes", "yes"]),
             ("gvu", "pope"): suite_scores.pope(qs, ["yes", "no"])}
  table = understanding.summary_table(["base", "gvu"], ["pope"], results).splitlines()
  assert table[0] == "| suite | metric | base | gvu | gvu - base |"
  accuracy = [l for l in table if l.startswith("| pope | accuracy |")]
  assert accuracy == ["| pope | accuracy | 0.5000 | 1.0000 | +0.5000 |"]


@pytest.mark.slow
def test_eval_scores_every_suite_and_resumes_per_suite(janus, tmp_path):
  """mode=eval with eval.understanding on the tiny conversion: each suite's
  answers (one per question, in the suite's order, each the most likely option)
  and the scores computed from them; the table in eval/summary.md; a second run
  keeps every finished suite."""
  import subprocess
  import sys
  from test_suites import WRITERS
  from gvu_jax.data import suites
  manual, tfds_dir = tmp_path / "manual", tmp_path / "tfds"
  manual.mkdir()
  for write in WRITERS.values():
    write(manual)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("w5 w6\n")
  args = [sys.executable, "-m", "gvu_jax.main", "--config=configs/janus_pro_1b.py:lora",
          f"--config.checkpoint={janus[1]}", "--config.expect_model=any", "--config.mode=eval",
          f"--config.data.prompts={prompts}", "--config.eval.images_per_prompt=1",
          "--config.eval.batch_size=2", "--config.eval.understanding=pope,mme,seed_bench",
          f"--config.data.manual_dir={manual}", f"--config.data.tfds_dir={tfds_dir}",
          "--config.model_options.max_prompt_tokens=4", "--config.model_options.dtype=float32",
          f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.run(args, capture_output=True, text=True, cwd=helpers_janus.ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "run" / "eval" / "base" / "understanding"
  summary = (tmp_path / "run" / "eval" / "summary.md").read_text()
  for suite in WRITERS:
    questions = suites.questions(suite, str(tfds_dir))
    rows = [json.loads(line) for line in (out / f"{suite}_answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions]
    assert understanding.answers(questions, np.array([r["logprobs"] for r in rows])) == [
        r["predicted"] for r in rows]
    record = json.loads((out / f"{suite}.json").read_text())
    scores = suite_scores.SCORES[suite](questions, [r["predicted"] for r in rows])
    assert record["scores"] == json.loads(json.dumps(scores)) and record["questions"] == len(rows)
    # an (image, question) pair asked twice (POPE's fixture repeats one) is scored once
    asked = {}
    for q, r in zip(questions, rows):
      asked.setdefault((q.image, q.question), []).append(r["logprobs"])
    assert record["distinct_questions"] == len(asked) == len(rows) - (suite == "pope")
    assert all(len({tuple(x) for x in same}) == 1 for same in asked.values())
    for metric, value in suite_scores.reported(suite, scores).items():
      assert f"| {suite} | {metric} | " in summary
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  again = subprocess.run(args, capture_output=True, text=True, cwd=helpers_janus.ROOT, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert all(f"understanding: base {s}: kept" in again.stdout for s in WRITERS)
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def png_bytes():
  import io
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)).save(
      buffer, format="PNG")
  return buffer.getvalue()


@given(cut=st.integers(0, 400), flip=st.one_of(st.none(), st.integers(0, 400)))
@settings(max_examples=60, deadline=None)
def test_a_damaged_image_is_one_line_naming_the_question(janus, tmp_path_factory, cut, flip):
  """Any prefix of a PNG, or a PNG with one byte changed, is read or refused in
  one line naming the question and the file: never another exception."""
  import types
  _, dst = janus
  images = understanding.image_reader(types.SimpleNamespace(
      config=types.SimpleNamespace(checkpoint=str(dst)), model=convert.read_converted_config(dst)))
  content = bytearray(png_bytes())
  if flip is not None:
    content[flip % len(content)] ^= 0xFF
  else:
    content = content[:cut % len(content)]
  path = tmp_path_factory.mktemp("damaged") / "image.png"
  path.write_bytes(bytes(content))
  try:
    pixels = images.read(question(0, str(path), "q"))
  except InputError as e:
    assert str(e).startswith(f"q:0: cannot read image {path} (") and "\n" not in str(e)
  else:
    assert pixels.shape == (16, 16, 3) and np.isfinite(pixels).all()
