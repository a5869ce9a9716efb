"""A user's prompt files (.txt, .jsonl, .csv): what is read, and the one-line
error naming file:line for each kind of bad input."""

import json

import pytest

from gvu_jax import context
from gvu_jax.data import prompt_files
from gvu_jax.errors import InputError


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
    ("p.jsonl", '{"prompt": "a cat"}\n["a dog"]\n', r"p.jsonl:2: expected a JSON object, got list"),
    ("p.jsonl", '{"caption": "a cat"}\n', r"p.jsonl:1: no 'prompt' field \(fields: \['caption'\]\)"),
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "   "}\n', r"p.jsonl:2: empty prompt"),
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
    context.read_prompts(str(tmp_path / "absent.txt"), {})
  world = context.read_prompts("world", {})
  assert len(world) > 100 and {p.category for p in world} >= {"counting", "position"}
