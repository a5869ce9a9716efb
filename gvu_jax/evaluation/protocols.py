"""How an evaluation harness asks a benchmark question and reads the reply
(docs/design.md §10). `eval.understanding_protocol` picks one:

  vlmevalkit  VLMEvalKit's Janus wrapper (vlmeval/vlm/janus.py), the harness of
              Janus-Pro's published understanding table: no system prompt;
              yes/no  "{question}\\nAnswer the question using a single word or
                      phrase." (POPE's " Please answer yes or no." removed first;
                      MME keeps its own);
              choice  ["Hint: {hint}\\n"]"{question}\\n" "A. {option}\\n" per option,
                      then "\\nAnswer with the option's letter from the given
                      choices directly.";
              open    GQA: as yes/no (LLaVA's short-answer line, which GQA's
                      published numbers use).
              Replies are read as VLMEvalKit reads them: YOrN extraction for
              yes/no, option matching (a lone option letter, else a lone option
              text) for choice.
  model_chat  the model's own chat (Janus' default system prompt); yes/no
              "{question} Please answer yes or no.", choice ["Hint: {hint}\\n"]
              the question, the options one a line and the letter instruction,
              open as vlmevalkit. Replies are read by each benchmark's own
              script: POPE's evaluate.py, MME's calculation.py; choice and open
              as vlmevalkit.

X-Omni is asked the same texts in its ChatML; its system turn is the model option
`system_prompt` under both protocols (the harness has no X-Omni wrapper).
Every reader returns an answer the question allows, or UNKNOWN: a reply out of
format, which the scores count wrong (suite_scores.py) and the format figures
count (understanding.py).
"""

import re

from gvu_jax.data.suites import KINDS, LETTERS
from gvu_jax.infra.errors import InputError

PROTOCOLS = ("vlmevalkit", "model_chat")
ANSWER_PATHS = ("logprob", "generate")   # eval.understanding_answers (understanding.py)
YES_NO_SUFFIX = "Please answer yes or no."
SHORT_ANSWER = "Answer the question using a single word or phrase."
CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
UNKNOWN = "unknown"


def kind(q):
  """"choice", "open" or "yes_no": how question `q` is answered (its suite's
  kind, data/suites.py KINDS; a question of no known suite: by its options)."""
  return KINDS.get(q.suite) or ("choice" if q.options else "yes_no")


def check(protocol):
  if protocol not in PROTOCOLS:
    raise InputError(f"eval.understanding_protocol={protocol!r}; expected one of "
                     f"{', '.join(PROTOCOLS)}")
  return protocol


def keeps_system_prompt(protocol):
  """Whether the model's default system prompt opens the question (Janus)."""
  return check(protocol) == "model_chat"


def question_text(q, protocol):
  """The user turn after the image, as the protocol asks `q`."""
  check(protocol)
  k = kind(q)
  if k == "choice":
    options = "".join(f"{l}. {o}\n" for l, o in zip(LETTERS, q.options))
    hint = f"Hint: {q.hint}\n" if q.hint else ""
    if protocol == "model_chat":
      return "\n".join([hint + q.question.strip(), options.rstrip("\n"), CHOICE_SUFFIX])
    return f"{hint}{q.question}\n{options}\n{CHOICE_SUFFIX}"
  if k == "open" or protocol == "vlmevalkit":
    question = q.question
    if q.suite == "pope":
      question = question.replace(" " + YES_NO_SUFFIX, "")
    return f"{question}\n{SHORT_ANSWER}"
  text = q.question.strip()
  return text if text.endswith(YES_NO_SUFFIX) else f"{text} {YES_NO_SUFFIX}"


# --- reading a reply ---------------------------------------------------------

_PUNCTUATION = ";/[]\"{}()=+\\_->< @`,?!".replace(" ", "")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")


def vqa_words(text):
  """The words of `text` after the VQA evaluation's punctuation rule (VLMEvalKit's
  process_punctuation): a mark next to a space, or any mark in a text with a
  comma inside a number, is dropped, else it becomes a space; a period not
  followed by a digit is dropped."""
  out = text
  drop_all = _COMMA_IN_NUMBER.search(text) is not None
  for mark in _PUNCTUATION:
    beside_space = f"{mark} " in text or f" {mark}" in text
    out = out.replace(mark, "" if beside_space or drop_all else " ")
  return _PERIOD.sub("", out).split()


def yes_or_no(reply):
  """VLMEvalKit's YOrN extraction: "yes" or "no" when exactly one of the two is
  a word of the reply."""
  words = vqa_words(reply.lower())
  if ("yes" in words) != ("no" in words):
    return "yes" if "yes" in words else "no"
  return UNKNOWN


def pope_rule(reply):
  """POPE's evaluate.py: the reply up to its first period, commas removed; "no"
  if "No", "no" or "not" is one of its space-separated words, else "yes"."""
  words = reply.split(".")[0].replace(",", "").split(" ")
  return "no" if {"No", "no", "not"} & set(words) else "yes"


def mme_rule(reply):
  """MME's calculation.py: the lower-cased reply, "yes"/"no" when it is one,
  else "yes" or "no" when that appears in its first four characters (yes
  first), else out of format."""
  text = reply.lower().strip()
  if text in ("yes", "no"):
    return text
  if "yes" in text[:4]:
    return "yes"
  return "no" if "no" in text[:4] else UNKNOWN


def choice_letter(reply, options):
  """VLMEvalKit's option matching (can_infer) without its LLM judge: the option
  letter when exactly one letter of the options stands alone as a word of the
  reply (after .()[],:;!*#{} become spaces); else the letter of the only option
  whose text, lower-cased, the lower-cased reply contains."""
  letters = LETTERS[:len(options)]
  words = reply
  for mark in ".()[],:;!*#{}":
    words = words.replace(mark, " ")
  found = [l for l in letters if l in words.split()]
  if len(found) == 1:
    return found[0]
  lower = reply.lower()
  inside = [l for l, o in zip(letters, options) if o.lower() in lower]
  return inside[0] if len(inside) == 1 else UNKNOWN


def short_answer(reply):
  """An open answer as LLaVA's GQA converter leaves it for GQA's eval.py: the
  first line, stripped, a final period removed, lower-cased; "" is out of format."""
  lines = reply.strip().splitlines()
  text = lines[0].strip().rstrip(".").strip().lower() if lines else ""
  return text or UNKNOWN


def read_reply(q, reply, protocol):
  """The answer `reply` gives to question `q` under `protocol` ("yes"/"no", an
  option letter, an open answer), or UNKNOWN."""
  k = kind(q)
  if k == "choice":
    return choice_letter(reply, q.options)
  if k == "open":
    return short_answer(reply)
  if check(protocol) == "model_chat":
    return pope_rule(reply) if q.suite == "pope" else mme_rule(reply)
  return yes_or_no(reply)
