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
from gvu_jax.data import suites  # noqa: E402
from gvu_jax.data.suites import Question  # noqa: E402
from gvu_jax.evaluation import protocols, suite_scores, understanding  # noqa: E402
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


def transformers_inputs(tokenizer, q, protocol):
  """The oracle's inputs: transformers' JanusProcessor builds the chat (its
  default system prompt under model_chat, none under vlmevalkit; the image
  expanded); one question, no padding."""
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token=jt.BOS, eos_token=jt.EOS, pad_token=jt.PAD,
      extra_special_tokens={"image_token": jt.IMG, "boi_token": jt.BOI, "eoi_token": jt.EOI})
  proc = transformers.JanusProcessor(
      transformers.JanusImageProcessorPil(size={"height": 16, "width": 16}, min_size=4,
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3),
      hf_tok, use_default_system_prompt=protocol == "model_chat", num_image_tokens=IMAGE_TOKENS)
  text = f"<|User|>: {jt.IMG}\n{protocols.question_text(q, protocol)}\n\n<|Assistant|>:"
  out = proc(text=[text], images=[Image.open(q.image).convert("RGB")], return_tensors="pt")
  ids = torch.cat([torch.tensor([[tokenizer.token_to_id(jt.BOS)]]), out["input_ids"]], 1)
  return ids, out["pixel_values"]


def transformers_logprobs(hf, tokenizer, q, option_ids, protocol):
  """The oracle: JanusForConditionalGeneration reads the answer position ->
  (option log-probs, the most likely token, the row's ids)."""
  ids, pixels = transformers_inputs(tokenizer, q, protocol)
  with torch.no_grad():
    logits = hf(input_ids=ids, pixel_values=pixels).logits[0, -1]
  logp = torch.log_softmax(logits.double(), -1).numpy()
  return (np.array([np.logaddexp.reduce(logp[row]) for row in option_ids]),
          int(np.argmax(logp)), ids[0].tolist())


def batch_of(templates, qs, protocol, extra_padding=3):
  """Our rows for `qs`: ids, valid, image slots (left-padded), pixels."""
  if protocol == "vlmevalkit":
    templates = templates.without_system_prompt()
  texts = [protocols.question_text(q, protocol) for q in qs]
  length = max(templates.question_tokens(t) for t in texts) + extra_padding
  pixels = jt.preprocess([Image.open(q.image) for q in qs], PREPROCESSOR | {
      "rescale_factor": 1 / 255, "do_rescale": True, "do_normalize": True})
  return (*templates.question(texts, length), pixels)


@pytest.mark.parametrize("protocol", protocols.PROTOCOLS)
def test_answers_are_transformers_janus_own(janus, hf, tmp_path, protocol):
  """Yes/no and multiple-choice questions on images of several shapes, batched
  and left-padded, under each protocol: every option's log-probability and the
  most likely next token equal transformers' Janus on the question alone (its
  processor's chat, with or without the system prompt), and so does the answer."""
  src, dst = janus
  tokenizer = jt.load_tokenizer(str(dst))
  templates = jt.JanusTemplates(tokenizer, image_tokens=IMAGE_TOKENS)
  model = helpers_janus.load_model(dst)
  from flax import nnx
  graphdef, params = nnx.split(model)
  paths = images(tmp_path, [(16, 16), (40, 70), (90, 30)])
  groups = {
      "yes/no": [question(0, paths[0], "w5 w6 w7?"),
                 question(1, paths[1], "w8 w9? Please answer yes or no.", answer="no"),
                 question(2, paths[2], "w20")],
      "choice": [question(3, paths[1], "w5 w8?", ["w20 w21", "w22", "w23 w24 w25", "w26"], "C"),
                 question(4, paths[2], "w9", ["w30", "w31", "w32"], "A")]}
  for name, qs in groups.items():
    table, mask = understanding.answer_table(tokenizer, understanding.answer_words(qs))
    option_ids = [row[m] for row, m in zip(table, mask)]
    scorer = understanding.make_scorer(graphdef, table, mask)
    ids, valid, slots, pixels = batch_of(templates, qs, protocol)
    ours, top1 = (np.asarray(x) for x in scorer(params, ids, valid, slots, pixels))
    oracle = [transformers_logprobs(hf, tokenizer, q, option_ids, protocol) for q in qs]
    for b, (want, want_top1, oracle_ids) in enumerate(oracle):
      assert ids[b, valid[b]].tolist() == oracle_ids, name     # the processor's own chat
      np.testing.assert_allclose(ours[b], want, atol=2e-5, err_msg=name)
      assert top1[b] == want_top1
    read = lambda lp, t: understanding.read_answers(qs, lp, t, table, None, protocol)[0]
    assert read(ours, top1) == read(np.stack([o[0] for o in oracle]),
                                    np.array([o[1] for o in oracle]))
  # "yes" and "Yes" are both one token: the yes option is their summed probability
  table, mask = understanding.answer_table(tokenizer, understanding.YES_NO_WORDS)
  assert sorted(table[0][mask[0]]) == sorted(tokenizer.token_to_id(w) for w in ("Yes", "yes"))


def test_replies_are_transformers_generate(janus, hf, tmp_path, protocol="vlmevalkit"):
  """The generate path: each question's greedy reply, batched and left-padded,
  is transformers' `generate` (greedy) on the question alone, token for token up
  to its end-of-sentence; the first position's option log-probs are the
  logprob path's. (The protocol changes only the rows, which the test above
  checks under both.)"""
  src, dst = janus
  tokenizer = jt.load_tokenizer(str(dst))
  templates = jt.JanusTemplates(tokenizer, image_tokens=IMAGE_TOKENS)
  from flax import nnx
  graphdef, params = nnx.split(helpers_janus.load_model(dst))
  paths = images(tmp_path, [(16, 16), (40, 70), (90, 30)])
  qs = [question(0, paths[0], "w5 w6 w7?"), question(1, paths[1], "w8?", answer="no"),
        question(2, paths[2], "w20 w21 w22 w23 w24")]
  table, mask = understanding.answer_table(tokenizer, understanding.YES_NO_WORDS)
  steps = 7
  inputs = batch_of(templates, qs, protocol)
  tokens, options, top1 = (np.asarray(x) for x in understanding.make_scorer(
      graphdef, table, mask, reply_tokens=steps)(params, *inputs))
  one_pass, one_top1 = (np.asarray(x) for x in understanding.make_scorer(graphdef, table, mask)(
      params, *inputs))
  np.testing.assert_allclose(options, one_pass, atol=1e-5)
  assert (top1 == one_top1).all() and (tokens[:, 0] == top1).all()
  eos = tokenizer.token_to_id(jt.EOS)
  lengths = []
  for b, q in enumerate(qs):
    ids, pixels = transformers_inputs(tokenizer, q, protocol)
    with torch.no_grad():
      out = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=steps,
                        do_sample=False, eos_token_id=eos, pad_token_id=eos)
    want = out[0, ids.shape[1]:].tolist()
    lengths.append(len(want))
    assert tokens[b, :len(want)].tolist() == want
    assert len(want) == steps or want[-1] == eos   # transformers stops at the end of sentence
    assert understanding.reply_text(tokenizer, tokens[b], {eos}) == tokenizer.decode(
        [t for t in want if t != eos], skip_special_tokens=True)
  assert max(lengths) == steps   # the decode loop is compared, not only the first token


def test_an_answer_word_that_is_no_token_is_one_line(tmp_path):
  helpers_janus.write_tokenizer(tmp_path)   # words w0, w1, ...: no "Yes"
  with pytest.raises(InputError, match=r"^the tokenizer has no single token for the answer "
                                       r"'Yes' \(nor 'yes'\); its answers cannot be read$"):
    understanding.answer_table(jt.load_tokenizer(str(tmp_path)), understanding.YES_NO_WORDS)


@pytest.mark.parametrize("logprobs, top1, options, expected, in_format", [
    # yes/no: a tie goes to the first; in format when the top-1 token is Yes/yes/No/no
    ([[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.0]], [7, 9, 40], 0, ["yes", "no", "yes"],
     [True, True, False]),
    # choice: only the question's own options count (3 of the table's 4 letters here)
    ([[-4.0, -3.0, -2.0, -0.1], [-1.0, -1.0, -5.0, -5.0]], [15, 12], 3, ["C", "A"],
     [False, True]),
])
def test_the_answer_is_the_most_likely_option(logprobs, top1, options, expected, in_format):
  qs = [question(i, "x", "q", [f"o{k}" for k in range(options)]) for i in range(len(logprobs))]
  table = np.array([[7, 8], [9, 10]]) if not options else np.array([[12], [13], [14], [15]])
  predicted, ok, mass = understanding.read_answers(qs, np.array(logprobs), np.array(top1), table,
                                                   None, "vlmevalkit")
  assert predicted == expected and ok == in_format
  n = options or 2
  np.testing.assert_allclose(mass, np.exp(np.array(logprobs)[:, :n]).sum(1))


def test_a_table_s_padding_is_no_answer_token():
  """answer_table pads short options with id 0 under a False mask: a top-1 token
  0 is then out of format, not read as the padding's option."""
  qs = [question(i, "x", "q") for i in range(2)]
  table, mask = np.array([[7, 8], [9, 0]]), np.array([[True, True], [True, False]])
  _, ok, _ = understanding.read_answers(qs, np.zeros((2, 2)), np.array([0, 9]), table, None,
                                        "vlmevalkit", mask)
  assert ok == [False, True]


def test_an_out_of_format_reply_is_scored_as_the_harness_scores_it():
  """Stand-in replies: what each protocol's rule reads, and the scores that
  follow (a reply out of format is never right; under POPE's own rule every reply
  is yes or no)."""
  qs = [Question("pope", "random", str(i), "x", "Is there a cat in the image?", (), a, "random",
                 "x", f"q:{i}") for i, a in enumerate(["yes", "yes", "no", "no"])]
  replies = ["Yes, there is.", "Maybe", "No.", "I cannot tell"]
  logprobs, top1, table = np.zeros((4, 2)), np.zeros(4, int), np.array([[1], [2]])
  for protocol, want, want_ok in [
      ("vlmevalkit", ["yes", "unknown", "no", "unknown"], [True, False, True, False]),
      ("model_chat", ["yes", "yes", "no", "yes"], [True, True, True, True])]:
    predicted, ok, _ = understanding.read_answers(qs, logprobs, top1, table, replies, protocol)
    assert predicted == want and ok == want_ok
    scores = suite_scores.pope(qs, predicted)["random"]
    right = sum(p == q.answer for p, q in zip(predicted, qs))
    assert scores["accuracy"] == right / 4
    assert scores["recall"] == sum(p == "yes" == q.answer for p, q in zip(predicted, qs)) / 2
  mme = [Question("mme", "perception", f"existence/a.jpg/{i}", "x", "Is it? Please answer yes "
                  "or no.", (), "yes", "existence", "existence/a.jpg", f"q:{i}") for i in range(2)]
  predicted, ok, _ = understanding.read_answers(mme, np.zeros((2, 2)), np.zeros(2, int), table,
                                                ["Yes", "I think so"], "model_chat")
  assert predicted == ["yes", "unknown"] and ok == [True, False]
  assert suite_scores.mme(mme, predicted)["subtasks"]["existence"]["score"] == 50.0


def test_the_summary_has_each_stage_and_their_difference():
  qs = [question(0, "x", "q"), question(1, "x", "q", answer="no")]
  results = {("base", "pope"): suite_scores.pope(qs, ["yes", "yes"]),
             ("gvu", "pope"): suite_scores.pope(qs, ["yes", "no"])}
  table = understanding.summary_table(["base", "gvu"], ["pope"], results).splitlines()
  assert table[0] == "| suite | metric | base | gvu | gvu - base |"
  accuracy = [l for l in table if l.startswith("| pope | accuracy |")]
  assert accuracy == ["| pope | accuracy | 0.5000 | 1.0000 | +0.5000 |"]


def check_suite_files(out, suite, questions, protocol, generated):
  """<suite>_answers.jsonl: one row per question, in order, each answer what the
  path and protocol read; <suite>.json: the scores of those answers."""
  rows = [json.loads(line) for line in (out / f"{suite}_answers.jsonl").read_text().splitlines()]
  assert [r["id"] for r in rows] == [q.id for q in questions]
  for q, r in zip(questions, rows):
    if generated:
      assert r["predicted"] == protocols.read_reply(q, r["reply"], protocol)
      assert r["in_format"] == (r["predicted"] != protocols.UNKNOWN)
    else:
      best = int(np.argmax(r["logprobs"][:len(q.options) or 2]))
      assert r["predicted"] == (suites.LETTERS[best] if q.options else suites.YES_NO[best])
  record = json.loads((out / f"{suite}.json").read_text())
  scores = suite_scores.SCORES[suite](questions, [r["predicted"] for r in rows])
  mass = [np.exp(r["logprobs"][:len(q.options) or 2]).sum() for q, r in zip(questions, rows)]
  assert record["scores"]["format"]["in_format"] == pytest.approx(
      np.mean([r["in_format"] for r in rows]))
  if suite != "gqa":
    assert record["scores"]["format"]["answer_mass"] == pytest.approx(np.mean(mass), rel=1e-4)
  del record["scores"]["format"]
  assert record["scores"] == json.loads(json.dumps(scores)) and record["questions"] == len(rows)
  assert (record["protocol"], record["answers"]) == (
      protocol, "generate" if generated or suite == "gqa" else "logprob")
  return rows, record


@pytest.mark.slow
def test_eval_scores_every_suite_and_resumes_per_suite(janus, tmp_path):
  """mode=eval with eval.understanding on the tiny conversion, every suite:
  under the default protocol and the logprob path each answer is the most likely
  option and the scores are computed from them; the table in eval/summary.md; a
  second run keeps every finished suite; the generate path under model_chat
  writes its replies, each read by the benchmark's own rule, beside them."""
  import subprocess
  import sys
  from test_suites import ALL_WRITERS
  manual, tfds_dir = tmp_path / "manual", tmp_path / "tfds"
  manual.mkdir()
  for write in ALL_WRITERS.values():
    write(manual)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("w5 w6\n")
  args = [sys.executable, "-m", "gvu_jax.main", "--config=configs/janus_pro_1b.py:lora",
          f"--config.checkpoint={janus[1]}", "--config.expect_model=any", "--config.mode=eval",
          f"--config.data.prompts={prompts}", "--config.eval.images_per_prompt=1",
          "--config.eval.batch_size=2", "--config.eval.reply_tokens=3",
          f"--config.eval.understanding={','.join(ALL_WRITERS)}",
          f"--config.data.manual_dir={manual}", f"--config.data.tfds_dir={tfds_dir}",
          "--config.model_options.max_prompt_tokens=4", "--config.model_options.dtype=float32",
          f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.run(args, capture_output=True, text=True, cwd=helpers_janus.ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "run" / "eval" / "base" / "understanding" / "vlmevalkit-logprob"
  summary = (tmp_path / "run" / "eval" / "summary.md").read_text()
  assert "Understanding benchmarks (vlmevalkit protocol, logprob answers):" in summary
  for suite in ALL_WRITERS:
    questions = suites.questions(suite, str(tfds_dir))
    rows, record = check_suite_files(out, suite, questions, "vlmevalkit", suite == "gqa")
    # an (image, question) pair asked twice (POPE's fixture repeats one) is scored once
    asked = {}
    for q, r in zip(questions, rows):
      asked.setdefault((q.image, q.question, q.options), []).append(r["logprobs"])
    assert record["distinct_questions"] == len(asked) == len(rows) - (suite == "pope")
    assert all(len({tuple(x) for x in same}) == 1 for same in asked.values())
    for metric in suite_scores.reported(suite, json.loads((out / f"{suite}.json").read_text())[
        "scores"]):
      assert f"| {suite} | {metric} | " in summary
  assert "| pope | in format | " in summary and "| pope | answer mass | " in summary
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  again = subprocess.run(args, capture_output=True, text=True, cwd=helpers_janus.ROOT, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert all(f"understanding: base {s}: kept" in again.stdout for s in ALL_WRITERS)
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
  generated = subprocess.run(
      args + ["--config.eval.understanding=pope,mme", "--config.eval.understanding_answers=generate",
              "--config.eval.understanding_protocol=model_chat"],
      capture_output=True, text=True, cwd=helpers_janus.ROOT, timeout=600)
  assert generated.returncode == 0, generated.stderr[-3000:]
  out = out.parent / "model_chat-generate"
  for suite in ("pope", "mme"):
    check_suite_files(out, suite, suites.questions(suite, str(tfds_dir)), "model_chat", True)
  assert {p.name: p.stat().st_mtime_ns for p in (out.parent / "vlmevalkit-logprob").iterdir()} == (
      before)


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
