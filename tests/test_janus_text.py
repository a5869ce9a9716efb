"""Janus templates and image preprocessing against the original format and
transformers' Janus processor, with a small real-format (byte-level BPE,
deepseek-like pre-tokenizer) tokenizer built here."""

import importlib.util
import json

import numpy as np
import PIL.Image
import pytest
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

from gvu_jax.infra.errors import InputError
from gvu_jax.rl import reward
from gvu_jax.text import janus as jt, xomni as xomni_text

PROMPTS = ["a red cat", "  3 blue dogs, on a mat.  ", '"Big" (cat) and 12 birds!', "x"]


def make_tokenizer(specials=jt.SPECIALS, extra_corpus=()):
  """Byte-level BPE with the deepseek tokenizer's kind of pre-tokenizer; the
  post-processor adds <bos> like the real LlamaTokenizerFast."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r"[\r\n]"), "isolated"),
      pre_tokenizers.Split(Regex(r"\s?[A-Za-z]+"), "isolated"),
      pre_tokenizers.Split(Regex(r"\s?[!-/:-~]+"), "isolated"),
      pre_tokenizers.Split(Regex(r"\s+$"), "isolated"),
      pre_tokenizers.Split(Regex(r"\p{N}+"), "isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  corpus = [jt.SYSTEM_PROMPT, jt.UNDERSTANDING_QUERY, "<|User|>: <|Assistant|>: User: Assistant:",
            *PROMPTS, *extra_corpus]
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=list(specials), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if jt.BOS in specials:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{jt.BOS} $A", special_tokens=[(jt.BOS, tok.token_to_id(jt.BOS))])
  return tok


@pytest.fixture(scope="module")
def tok():
  return make_tokenizer()


def sft(system, messages):
  """conversation.py's deepseek get_prompt + the processor's strip()."""
  ret = system + "\n\n" if system else ""
  for i, (role, msg) in enumerate(messages):
    ret += f"{role}: {msg.strip()}" + ("\n\n", jt.EOS)[i % 2] if msg else f"{role}:"
  return ret.strip()


def literal(tok, text):
  return tok.encode(text).ids   # with <bos>, as the original tokenizer.encode


@pytest.mark.parametrize("style", ["deepseek", "janus_1_3b"])
def test_generation_is_the_literal_template(tok, style):
  t = jt.JanusTemplates(tok, max_prompt_tokens=16, style=style)
  user, assistant = {"deepseek": ("<|User|>", "<|Assistant|>"),
                     "janus_1_3b": ("User", "Assistant")}[style]
  ids, valid = t.generation(PROMPTS)
  assert ids.shape == valid.shape == (len(PROMPTS), t.generation_length) and ids.dtype == np.int32
  for b, p in enumerate(PROMPTS):
    want = literal(tok, sft("", [(user, p), (assistant, "")]) + jt.BOI)
    n = len(want)
    assert ids[b, -n:].tolist() == want and valid[b, -n:].all()
    assert (ids[b, :-n] == t.pad_id).all() and not valid[b, :-n].any()   # left-padded
    head, ans = len(literal(tok, f"{user}:")), t.encode_prompt(p)
    assert want[head:head + len(ans)] == ans   # the " {prompt}" tokens
  assert len(t.encode_prompt(PROMPTS[0])) == 3   # " a", " red", " cat"


def test_unconditional_rows(tok):
  t = jt.JanusTemplates(tok, max_prompt_tokens=16)
  ids, valid = t.unconditional(3)
  assert ids.shape == (3, t.generation_length)
  bos, boi = tok.token_to_id(jt.BOS), tok.token_to_id(jt.BOI)
  assert (ids[:, -2:] == [bos, boi]).all() and (ids[:, :-2] == t.pad_id).all()
  assert valid.sum(1).tolist() == [2, 2, 2] and valid[:, -2:].all()
  # The original form: the prompt with everything but <bos>/<begin_of_image> padded,
  # the conditional attention mask kept (generation_inference.py: tokens[1:-1] = pad).
  cond, cvalid = t.generation(PROMPTS[:2])
  uids, uvalid = t.unconditional_like(cond, cvalid)
  assert (uvalid == cvalid).all()
  for b in range(2):
    row = cond[b, cvalid[b]].copy()
    row[1:-1] = t.pad_id
    assert uids[b, cvalid[b]].tolist() == row.tolist()
    assert (uids[b, ~cvalid[b]] == t.pad_id).all()


@pytest.mark.parametrize("style", ["deepseek", "janus_1_3b"])
def test_understanding_is_the_literal_template(tok, style):
  t = jt.JanusTemplates(tok, max_prompt_tokens=16, style=style)
  user, assistant = {"deepseek": ("<|User|>", "<|Assistant|>"),
                     "janus_1_3b": ("User", "Assistant")}[style]
  u = t.understanding(PROMPTS)
  assert u.ids.shape == (len(PROMPTS), u.answer_start + 17) and u.answer_len == 17
  block = jt.BOI + jt.IMG * 576 + jt.EOI   # add_image_token's expansion
  eos = tok.token_to_id(jt.EOS)
  for b, p in enumerate(PROMPTS):
    text = sft(jt.SYSTEM_PROMPT, [(user, f"{jt.IMG}\n{jt.UNDERSTANDING_QUERY}"), (assistant, p)])
    assert text.endswith(f"{assistant}: {p.strip()}{jt.EOS}")
    want = literal(tok, text.replace(jt.IMG, block))
    n, ans = len(want), t.encode_prompt(p)
    assert u.ids[b, :n].tolist() == want and u.valid[b, :n].all()
    assert (u.ids[b, n:] == t.pad_id).all() and not u.valid[b, n:].any()   # right-padded
    assert u.ids[b, u.answer_start:u.answer_start + len(ans)].tolist() == ans
    assert u.ids[b, u.answer_start + len(ans)] == eos
    assert u.answer_mask[b].tolist() == [True] * len(ans) + [False] * (17 - len(ans))
    slots = np.flatnonzero(u.image_slots[b])
    assert len(slots) == 576 and slots[-1] - slots[0] == 575
    assert u.ids[b, slots[0] - 1] == tok.token_to_id(jt.BOI)
    assert u.ids[b, slots[-1] + 1] == tok.token_to_id(jt.EOI)
  assert sorted(u.arrays()) == ["answer_mask", "answer_start", "ids", "image_slots", "valid"]


def test_matches_transformers_processor(tok):
  tf = pytest.importorskip("transformers")
  hf_tok = tf.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=jt.BOS, eos_token=jt.EOS, pad_token=jt.PAD,
      extra_special_tokens={"image_token": jt.IMG, "boi_token": jt.BOI, "eoi_token": jt.EOI})
  proc = tf.JanusProcessor(tf.JanusImageProcessorPil(), hf_tok, use_default_system_prompt=True)
  t = jt.JanusTemplates(tok, max_prompt_tokens=16)
  # Understanding: the processor adds its system prompt and expands <image_placeholder>.
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in [(40, 70), (90, 30)]]
  u = t.understanding(PROMPTS[:2])
  for b, p in enumerate(PROMPTS[:2]):
    text = f"<|User|>: {jt.IMG}\n{jt.UNDERSTANDING_QUERY}\n\n<|Assistant|>: {p.strip()}{jt.EOS}"
    out = proc(text=[text], images=[images[b]], return_tensors="np")
    want = out["input_ids"][0].tolist()
    assert u.ids[b, :len(want)].tolist() == want and u.valid[b].sum() == len(want)
    got = jt.preprocess([images[b]], {
        "image_size": 384, "min_size": 14, "rescale_factor": 1 / 255, "do_rescale": True,
        "do_normalize": True, "image_mean": list(tf.image_utils.OPENAI_CLIP_MEAN),
        "image_std": list(tf.image_utils.OPENAI_CLIP_STD)})
    assert np.abs(got - out["pixel_values"].transpose(0, 2, 3, 1)).max() <= 1e-5
  # Generation: image mode appends <begin_of_image> (no system prompt), left padding.
  texts = [f"<|User|>: {p.strip()}\n\n<|Assistant|>:" for p in PROMPTS]
  out = proc(text=texts, generation_mode="image", padding=True, return_tensors="np")
  ids, valid = t.generation(PROMPTS)
  for b in range(len(PROMPTS)):
    mask = out["attention_mask"][b].astype(bool)
    assert ids[b, valid[b]].tolist() == out["input_ids"][b, mask].tolist()


def image_processors():
  tf = pytest.importorskip("transformers")
  procs = [tf.JanusImageProcessorPil]
  if importlib.util.find_spec("torchvision"):   # else JanusImageProcessor is the PIL one
    procs.append(tf.models.janus.image_processing_janus.JanusImageProcessor)
  return procs


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                      ((0.48145466, 0.4578275, 0.40821073),
                                       (0.26862954, 0.26130258, 0.27577711))])
def test_preprocess_matches_transformers(mean, std):
  rng = np.random.default_rng(1)
  shapes = [(333, 500), (500, 333), (10, 500), (384, 384), (77, 64), (200, 201), (1000, 37)]
  images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in shapes]
  images[1] = PIL.Image.fromarray(images[1])
  cfg = {"image_size": 384, "min_size": 14, "rescale_factor": 1 / 255, "do_rescale": True,
         "do_normalize": True, "image_mean": list(mean), "image_std": list(std)}
  got = jt.preprocess(images, cfg)
  assert got.shape == (len(images), 384, 384, 3) and got.dtype == np.float32
  for cls in image_processors():
    ref = cls(image_mean=list(mean), image_std=list(std))(images, return_tensors="np")
    diff = np.abs(got - np.asarray(ref["pixel_values"]).transpose(0, 2, 3, 1)).max()
    # torchvision's antialiased bicubic may differ from PIL's by one uint8 level.
    tol = 1e-5 if "Pil" in cls.__name__ else 1.01 / 255 / min(std)
    assert diff <= tol, (cls.__name__, diff)


def test_preprocess_pads_with_the_mean_colour():
  cfg = {"image_size": 8, "min_size": 2, "rescale_factor": 1 / 255, "do_rescale": True,
         "do_normalize": False, "image_mean": [0.5, 0.25, 1.0], "image_std": [1, 1, 1]}
  out = jt.preprocess([np.zeros((4, 8, 3), np.uint8)], cfg)[0]
  assert (out[2:6] == 0).all()
  assert np.allclose(out[:2], np.float32([127, 63, 255]) / 255)
  assert np.allclose(out[6:], np.float32([127, 63, 255]) / 255)


def test_load_tokenizer(tmp_path, tok):
  tok.save(str(tmp_path / "tokenizer.json"))
  for path in (tmp_path, tmp_path / "tokenizer.json"):
    assert jt.load_tokenizer(str(path)).encode("a red cat").ids == tok.encode("a red cat").ids
  with pytest.raises(InputError, match="no tokenizer.json at .*nowhere") as e:
    jt.load_tokenizer(str(tmp_path / "nowhere"))
  assert "\n" not in str(e.value)


def test_missing_special_token():
  specials = [s for s in jt.SPECIALS if s != jt.PAD]
  with pytest.raises(InputError, match="has no '<｜▁pad▁｜>' token"):
    jt.JanusTemplates(make_tokenizer(specials))


def test_prompt_errors(tok):
  t = jt.JanusTemplates(tok, max_prompt_tokens=4)
  too_long = r"prompt 'a red cat and a dog' is \d+ tokens; .* room for 4"
  with pytest.raises(InputError, match=too_long):
    t.generation(["a red cat and a dog"])
  with pytest.raises(InputError, match=r"is \d+ tokens"):
    t.understanding(["a red cat and a dog"])
  with pytest.raises(InputError, match="empty prompt"):
    t.encode_prompt("  ")
  with pytest.raises(InputError, match="style"):
    jt.JanusTemplates(tok, style="llama")


ORIGINAL_CONFIG = {   # deepseek-ai/Janus-Pro-1B's preprocessor_config.json
    "background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "VLMImageProcessor", "image_size": 384, "image_std": [0.5, 0.5, 0.5],
    "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098}


def test_load_preprocessor_config(tmp_path):
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(ORIGINAL_CONFIG))
  cfg = jt.load_preprocessor_config(str(tmp_path))
  assert cfg == {"image_size": 384, "min_size": 14, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                 "rescale_factor": 0.00392156862745098, "do_rescale": True, "do_normalize": True}
  hf = dict(ORIGINAL_CONFIG, size={"height": 384, "width": 384})
  del hf["image_size"]
  (tmp_path / "hf.json").write_text(json.dumps(hf))
  assert jt.load_preprocessor_config(str(tmp_path / "hf.json")) == cfg


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.pop("image_mean"), "missing key 'image_mean'"),
    (lambda c: c.pop("image_size"), "missing key 'image_size'"),
    (lambda c: c.update(image_std=[0.5, 0.5]), "key 'image_std' must be 3 numbers"),
    (lambda c: c.update(min_size="14"), "key 'min_size' must be a number"),
])
def test_preprocessor_config_errors(tmp_path, edit, match):
  cfg = dict(ORIGINAL_CONFIG)
  edit(cfg)
  path = tmp_path / "preprocessor_config.json"
  path.write_text(json.dumps(cfg))
  with pytest.raises(InputError, match=f"preprocessor_config.json: {match}"):
    jt.load_preprocessor_config(str(path))
  with pytest.raises(InputError, match="cannot read preprocessor config .*missing.json"):
    jt.load_preprocessor_config(str(tmp_path / "missing.json"))


# --- reward.token_weights on a byte-level tokenizer ---------------------------

WEIGHTED_PROMPTS = ["a photo of a red cat", "photo of two dogs", "of a photo, a photo"]
TEMPLATE_WORDS = {"a": 0.0, "photo": 0.0, "of": 0.5}


def janus_templates(tok):
  return jt.JanusTemplates(tok, image_tokens=4, max_prompt_tokens=12)


def xomni_templates(tok):
  return xomni_text.XOmniTemplates(tok, (2, 2), 12, tok.get_vocab_size(), system_prompt="")


XOMNI_SPECIALS = (xomni_text.SOM, xomni_text.EOM, xomni_text.IMAGE, xomni_text.IM_START,
                  xomni_text.IM_END, xomni_text.PAD)


@pytest.mark.parametrize("make_templates, specials", [(janus_templates, jt.SPECIALS),
                                                      (xomni_templates, XOMNI_SPECIALS)])
def test_token_weights_reach_every_answer_token_of_a_listed_word(make_templates, specials):
  """The template-word example of docs/design.md §2 on byte-level BPE: a listed word gets its
  weight wherever it stands in the answer the reward scores (first word, after a
  space), every other answer token keeps weight 1."""
  tok = make_tokenizer(specials, extra_corpus=WEIGHTED_PROMPTS * 3)
  templates = make_templates(tok)
  table = reward.token_weight_table(tok, TEMPLATE_WORDS, tok.get_vocab_size())
  batch = templates.understanding(WEIGHTED_PROMPTS)
  answers = batch.ids[:, batch.answer_start:batch.answer_start + batch.answer_mask.shape[1]]
  listed = 0
  for row, mask in zip(answers, batch.answer_mask):
    for token_id in row[mask]:
      word = tok.decode([int(token_id)]).strip()
      assert table[token_id] == TEMPLATE_WORDS.get(word, 1.0), (word, table[token_id])
      listed += word in TEMPLATE_WORDS
  assert listed == 11


def test_token_weights_refuse_a_word_that_is_no_token():
  tok = make_tokenizer(extra_corpus=WEIGHTED_PROMPTS * 3)
  with pytest.raises(InputError, match=r"reward.token_weights: 'zebra' is not one token "
                                       r"of the tokenizer \(in a prompt it reads as \[") as e:
    reward.token_weight_table(tok, {"photo": 0.0, "zebra": 0.0}, tok.get_vocab_size())
  assert "\n" not in str(e.value)


# One question per suite as its harness asks it: (suite, question, options, hint,
# VLMEvalKit's prompt as its Janus wrapper builds it, model_chat's user text).
HARNESS = [
    ("pope", "Is there a dog in the image?", (), "",
     "\nIs there a dog in the image?\nAnswer the question using a single word or phrase.",
     "Is there a dog in the image? Please answer yes or no."),
    ("mme", "Is this a cat? Please answer yes or no.", (), "",
     "\nIs this a cat? Please answer yes or no.\nAnswer the question using a single word or "
     "phrase.", "Is this a cat? Please answer yes or no."),
    ("seed_bench", "How many cats?", ("one", "two", "three", "four"), "",
     "\nHow many cats?\nA. one\nB. two\nC. three\nD. four\n\nAnswer with the option's letter "
     "from the given choices directly.",
     "How many cats?\nA. one\nB. two\nC. three\nD. four\nAnswer with the option's letter from "
     "the given choices directly."),
    ("gqa", "What color is the car?", (), "",
     "\nWhat color is the car?\nAnswer the question using a single word or phrase.",
     "What color is the car?\nAnswer the question using a single word or phrase."),
    ("mmbench", "Which one is red?", ("the left", "the right"), "Two balls.",
     "\nHint: Two balls.\nWhich one is red?\nA. the left\nB. the right\n\nAnswer with the "
     "option's letter from the given choices directly.",
     "Hint: Two balls.\nWhich one is red?\nA. the left\nB. the right\nAnswer with the option's "
     "letter from the given choices directly."),
]


@pytest.mark.parametrize("protocol", ["vlmevalkit", "model_chat"])
@pytest.mark.parametrize("suite, question, options, hint, harness, own", HARNESS)
def test_question_rows_are_the_harness_prompt(protocol, suite, question, options, hint, harness,
                                              own):
  """A benchmark question's row, token for token: under vlmevalkit the deepseek
  chat with no system prompt around VLMEvalKit's prompt (its Janus wrapper puts
  the image, then the prompt, in the user turn); under model_chat the
  processor's system prompt and the model's own question text."""
  from gvu_jax.data.suites import Question
  from gvu_jax.evaluation import protocols
  tok = make_tokenizer(extra_corpus=[harness, own])
  t = jt.JanusTemplates(tok, max_prompt_tokens=16)
  q = Question(suite, "s", "0", "x.jpg", question, options, "A" if options else "yes", "g", "x",
               "f:1", hint)
  if protocol == "vlmevalkit":
    t = t.without_system_prompt()
    text = sft("", [("<|User|>", jt.IMG + harness), ("<|Assistant|>", "")])
  else:
    text = sft(jt.SYSTEM_PROMPT, [("<|User|>", f"{jt.IMG}\n{own}"), ("<|Assistant|>", "")])
  want = literal(tok, text.replace(jt.IMG, jt.BOI + jt.IMG * 576 + jt.EOI))
  asked = protocols.question_text(q, protocol)
  ids, valid, slots = t.question([asked], t.question_tokens(asked) + 2)
  assert ids[0, valid[0]].tolist() == want
  assert slots[0].sum() == 576 and not valid[0, :2].any()   # left-padded
  # the reward's understanding query keeps the system prompt under both protocols
  assert t.understanding(["a cat"]).ids[0, 1:4].tolist() == tok.encode(
      jt.SYSTEM_PROMPT, add_special_tokens=False).ids[:3]


@pytest.mark.parametrize("protocol", ["vlmevalkit", "model_chat"])
@pytest.mark.parametrize("suite, question, options, hint, harness, own", HARNESS)
def test_xomni_question_rows_are_the_chatml_of_the_same_text(protocol, suite, question, options,
                                                             hint, harness, own):
  """X-Omni is asked the same user text in ChatML, token for token, its system
  turn the model option under both protocols."""
  from gvu_jax.data.suites import Question
  from gvu_jax.evaluation import protocols
  tok = make_tokenizer(XOMNI_SPECIALS, extra_corpus=[harness, own])
  system = "You are a careful judge."
  t = xomni_text.XOmniTemplates(tok, (2, 3), 12, tok.get_vocab_size(), system_prompt=system)
  q = Question(suite, "s", "0", "x.jpg", question, options, "A" if options else "yes", "g", "x",
               "f:1", hint)
  text = {"vlmevalkit": harness[1:], "model_chat": own}[protocol]   # the user text after "\n"
  asked = protocols.question_text(q, protocol)
  assert asked == text
  ids, valid, slots = t.question([asked], t.question_tokens(asked, (2, 3)) + 1, [(2, 3)])
  encode = lambda s: tok.encode(s, add_special_tokens=False).ids
  want = (encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<SOM>2 3<IMAGE>")
          + [t.image_token_id] * 6 + encode(f"<EOM>\n{text}<|im_end|>\n<|im_start|>assistant\n"))
  assert ids[0, valid[0]].tolist() == want and slots[0].sum() == 6
