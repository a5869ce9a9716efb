"""How each harness asks a benchmark question and reads the reply
(evaluation/protocols.py): the exact texts per suite and protocol, each reading
rule on replies its harness documents, and that every reply reads as an answer
the question allows or as unknown."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvu_jax.data.suites import Question
from gvu_jax.evaluation import protocols
from gvu_jax.infra.errors import InputError


def q(suite, text, options=(), hint=""):
  return Question(suite, "s", "0", "x.jpg", text, tuple(options), "A" if options else "yes", "g",
                  "x.jpg", "f:1", hint)


SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."

# (question, protocol) -> the user turn after the image, exactly
TEXTS = [
    (q("pope", "Is there a dog in the image?"), "vlmevalkit",
     f"Is there a dog in the image?\n{SHORT}"),
    (q("pope", "Is there a dog in the image? Please answer yes or no."), "vlmevalkit",
     f"Is there a dog in the image?\n{SHORT}"),
    (q("pope", " Is there a dog in the image? "), "model_chat",
     "Is there a dog in the image? Please answer yes or no."),
    (q("mme", "Is this a cat? Please answer yes or no."), "vlmevalkit",
     f"Is this a cat? Please answer yes or no.\n{SHORT}"),
    (q("mme", "Is this a cat? Please answer yes or no."), "model_chat",
     "Is this a cat? Please answer yes or no."),
    (q("seed_bench", "How many cats?", ["one", "two", "three", "four"]), "vlmevalkit",
     f"How many cats?\nA. one\nB. two\nC. three\nD. four\n\n{LETTER}"),
    (q("seed_bench", "How many cats?", ["one", "two", "three", "four"]), "model_chat",
     f"How many cats?\nA. one\nB. two\nC. three\nD. four\n{LETTER}"),
    (q("mmbench", "Which one?", ["red", "blue"], hint="Look left."), "vlmevalkit",
     f"Hint: Look left.\nWhich one?\nA. red\nB. blue\n\n{LETTER}"),
    (q("mmbench", "Which one?", ["red", "blue"]), "vlmevalkit",
     f"Which one?\nA. red\nB. blue\n\n{LETTER}"),
    (q("mmbench", "Which one?", ["red", "blue"], hint="Look left."), "model_chat",
     f"Hint: Look left.\nWhich one?\nA. red\nB. blue\n{LETTER}"),
    (q("gqa", "What color is the car?"), "vlmevalkit", f"What color is the car?\n{SHORT}"),
    (q("gqa", "What color is the car?"), "model_chat", f"What color is the car?\n{SHORT}"),
]


@pytest.mark.parametrize("question, protocol, text", TEXTS)
def test_question_text_is_the_protocol(question, protocol, text):
  assert protocols.question_text(question, protocol) == text


def test_an_unknown_protocol_is_one_line():
  with pytest.raises(InputError, match=r"^eval.understanding_protocol='lmms'; expected one of "
                                       r"vlmevalkit, model_chat$"):
    protocols.question_text(q("pope", "x"), "lmms")


@pytest.mark.parametrize("reply, want", [
    ("Yes", "yes"), ("yes.", "yes"), ("No, there is no dog.", "no"), ("NO", "no"),
    ("Yes and no", "unknown"), ("Maybe", "unknown"), ("", "unknown"), ("yes-no", "unknown"),
    ("The answer is yes!", "yes"), ("nope", "unknown"), ("No.Yes", "unknown")])
def test_vlmevalkit_reads_yes_or_no(reply, want):
  assert protocols.yes_or_no(reply) == want


@pytest.mark.parametrize("reply, want", [
    ("Yes, there is a dog.", "yes"), ("No, there is not.", "no"), ("There is not a dog", "no"),
    ("Maybe", "yes"), ("There is a dog. No doubt.", "yes"), ("no", "no"), ("No,", "no"),
    ("Nothing", "yes")])
def test_popes_own_rule(reply, want):
  assert protocols.pope_rule(reply) == want


@pytest.mark.parametrize("reply, want", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), (" No.", "no"), ("Not really", "no"),
    ("I think so", "unknown"), ("The answer is yes", "unknown"), ("nope", "no")])
def test_mmes_own_rule(reply, want):
  assert protocols.mme_rule(reply) == want


@pytest.mark.parametrize("reply, options, want", [
    ("B", ["a cat", "a dog"], "B"), ("(C) three", ["one", "two", "three"], "C"),
    ("The answer is B.", ["x", "y", "z"], "B"), ("A or B", ["x", "y"], "unknown"),
    ("a dog", ["a cat", "a dog"], "B"), ("twenty-two", ["one", "two", "twenty-two"], "unknown"),
    ("E", ["x", "y", "z", "w"], "unknown"), ("D", ["x", "y", "z"], "unknown"),
    ("I see a cat", ["cat", "dog"], "A")])
def test_choice_letter_is_vlmevalkits_matching(reply, options, want):
  assert protocols.choice_letter(reply, options) == want


@pytest.mark.parametrize("reply, want", [
    ("Red.", "red"), ("  left \n because", "left"), ("", "unknown"), ("...", "unknown"),
    ("Yes", "yes")])
def test_short_answer_is_llavas_gqa_conversion(reply, want):
  assert protocols.short_answer(reply) == want


@pytest.mark.parametrize("text, words", [
    ("yes, it is.", ["yes", "it", "is"]), ("1,000 cats", ["1000", "cats"]),
    ("a-b (c)", ["a", "b", "c"]), ("3.5 or 3.", ["3.5", "or", "3"])])
def test_vqa_punctuation(text, words):
  assert protocols.vqa_words(text) == words


@settings(max_examples=200, deadline=None)
@given(reply=st.text(max_size=40), suite=st.sampled_from(["pope", "mme", "seed_bench", "gqa"]),
       protocol=st.sampled_from(protocols.PROTOCOLS), n=st.integers(2, 4))
def test_every_reply_reads_as_an_allowed_answer_or_unknown(reply, suite, protocol, n):
  options = [f"option {i}" for i in range(n)] if suite == "seed_bench" else []
  question = q(suite, "What?", options)
  got = protocols.read_reply(question, reply, protocol)
  allowed = {"choice": set("ABCD"[:n]), "yes_no": {"yes", "no"}}.get(protocols.kind(question))
  if allowed is None:   # open: a non-empty answer text
    assert got and got == got.strip().lower()
  else:
    assert got in allowed | {protocols.UNKNOWN}
