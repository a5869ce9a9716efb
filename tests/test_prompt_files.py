"""A user's prompt files (.txt, .jsonl, .csv): what is read, and the one-line
error naming file:line for each kind of bad input."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvu_jax.data import prompt_files, prompt_sources
from gvu_jax.infra.errors import InputError


def write(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return str(path)


def test_txt_skips_blank_and_comment_lines(tmp_path):
  path = write(tmp_path, "p.txt", "\ufeffa photo of a cat\n\n# not a prompt\n  a red  bus \n")
  assert prompt_files.read(path) == [prompt_files.Prompt("a photo of a cat", id="0"),
                                     prompt_files.Prompt("a red bus", id="1")]


def test_jsonl_reads_geneval_metadata(tmp_path):
  rows = [{"tag": "counting", "include": [{"class": "dog", "count": 2}],
           "prompt": "a photo of two dogs"},
          {"id": "q7", "text": "a blue cup", "category": "colors"}]
  path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
  first, second = prompt_files.read(path)
  assert (first.text, first.category, first.id) == ("a photo of two dogs", "counting", "0")
  assert dict(first.meta) == {"include": json.dumps([{"class": "dog", "count": 2}],
                                                    sort_keys=True)}
  assert (second.text, second.category, second.id, second.meta) == (
      "a blue cup", "colors", "q7", ())


def test_csv_with_header(tmp_path):
  path = write(tmp_path, "p.csv", 'id,prompt,tag\n1,"a cat, sleeping",animals\n2,a dog,\n')
  assert prompt_files.read(path) == [prompt_files.Prompt("a cat, sleeping", "animals", "1"),
                                     prompt_files.Prompt("a dog", "prompts", "2")]


@pytest.mark.parametrize("name,content,message", [
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog"\n',
     r"p.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 19\)"),
    ("p.jsonl", '{"prompt": "a cat"}\n["a dog"]\n', r"p.jsonl:2: expected a JSON object, got array"),
    ("p.jsonl", '{"caption": "a cat"}\n', r"p.jsonl:1: no 'prompt' field \(fields: \['caption'\]\)"),
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "   "}\n', r"p.jsonl:2: empty prompt"),
    ("p.jsonl", '{"prompt": 7}\n', r"p.jsonl:1: 'prompt' is a JSON number, expected a string"),
    ("p.jsonl", '{"text": ["a", "cat"]}\n', r"p.jsonl:1: 'text' is a JSON array, expected a string"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": null}\n', r"p.jsonl:2: 'prompt' is a JSON null"),
    ("p.jsonl", '{"prompt": {"en": "a cat"}}\n', r"p.jsonl:1: 'prompt' is a JSON object"),
    ("p.jsonl", '{"prompt": true}\n', r"p.jsonl:1: 'prompt' is a JSON boolean"),
    ("p.jsonl", '{"id": 3, "prompt": "a"}\n{"prompt": "b"}\n{"id": "3", "prompt": "c"}\n',
     r"p.jsonl:3: duplicate id '3' \(first on line 1\)"),
    ("p.txt", b"a cat\na caf\xe9 sign\n", r"p.txt:2: not UTF-8 \(byte 0xe9 at column 6\)"),
    ("p.txt", "# only a comment\n\n", r"p.txt: the file holds no prompts"),
    ("p.csv", "caption\na cat\n", r"p.csv:1: the header has no 'prompt' column"),
    ("p.csv", "prompt\na cat,extra\n", r"p.csv:2: more values than the header's 1 columns"),
    ("p.yaml", "- a cat\n", r"p.yaml: unknown prompt file type '.yaml'"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, name, content, message):
  path = write(tmp_path, name, content)
  with pytest.raises(InputError, match=message) as error:
    prompt_files.read(path)
  assert str(error.value).startswith(path) and "\n" not in str(error.value)


def test_missing_file_and_the_world(tmp_path):
  with pytest.raises(InputError, match="no such prompt file"):
    prompt_sources.read_prompts(str(tmp_path / "absent.txt"), {})
  world = prompt_sources.read_prompts("world", {})
  assert len(world) > 100 and {p.category for p in world} >= {"counting", "position"}


# --- lines as the formats define them -----------------------------------------

# Prompt text with the characters str.splitlines() would break a line at (form
# feed, vertical tab, file/group/record separators, NEL, U+2028/U+2029), never
# "\n" or "\r", and not starting with the comment mark.
LINE_BREAKERS = "\f\v\x1c\x1d\x1e\x85\u2028\u2029"
prompt_text = st.text(alphabet=st.sampled_from("ab c" + LINE_BREAKERS + "é🙂"), min_size=1,
                      max_size=12).filter(lambda t: t.strip() and not t.lstrip().startswith("#"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(prompt_text, min_size=1, max_size=6), crlf=st.booleans(),
       fmt=st.sampled_from(["txt", "jsonl"]))
def test_every_prompt_is_one_line_whatever_it_holds(tmp_path, texts, crlf, fmt):
  """A prompt holding any of the characters splitlines() breaks at is still one
  prompt on one line, in .txt (LF or CRLF) and in .jsonl (unescaped UTF-8)."""
  lines = texts if fmt == "txt" else [json.dumps({"prompt": t}, ensure_ascii=False)
                                      for t in texts]
  path = write(tmp_path, f"p.{fmt}", ("\r\n" if crlf else "\n").join(lines) + "\n")
  got = prompt_files.read(path)
  assert [p.text for p in got] == [" ".join(t.split()) for t in texts]
  assert [p.id for p in got] == [str(i) for i in range(len(texts))]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(prompt_text, min_size=1, max_size=5), bad_at=st.integers(0, 5))
def test_an_error_names_the_files_own_line_number(tmp_path, texts, bad_at):
  """Line numbers count "\n" only: a bad line after prompts full of line
  separators is reported at its place in the file."""
  lines = [json.dumps({"prompt": t}, ensure_ascii=False) for t in texts]
  bad_at = min(bad_at, len(lines))
  lines.insert(bad_at, '{"prompt": 3}')
  path = write(tmp_path, "p.jsonl", "\n".join(lines) + "\n")
  with pytest.raises(InputError, match=f"p.jsonl:{bad_at + 1}: 'prompt' is a JSON number"):
    prompt_files.read(path)


def test_a_long_prompt_is_quoted_by_its_first_80_characters(tmp_path):
  from gvu_jax.text import synthetic as text
  templates = text.Templates(text.synthetic_tokenizer(), 16, 4)
  long = "a photo of " + "red " * 200 + "circles"
  for encode in (templates.encode_prompt, lambda t: templates.encode_prompt(t + " zebra")):
    with pytest.raises(InputError) as error:
      encode(long)
    message = str(error.value)
    assert repr(long[:80] + "...") in message and len(message) < 300
