"""A user's own prompts: a text, JSON-lines or CSV file -> [Prompt].

  .txt    one prompt per line; blank lines and lines starting with '#' skipped
  .jsonl  one object per line: "prompt" (or "text"), optional "id" and "tag"
          (or "category"); any other fields are kept as metadata (GenEval's
          `include`, for example)
  .csv    a header row with a "prompt" (or "text") column, optional "id" and
          "tag"/"category" columns

Lines end at "\n" only (one "\r" before it is dropped), as the formats define
them: a form feed or a Unicode line separator inside a prompt is part of it, and
line numbers are the file's. Every problem is one line naming the file and line:
bytes that are not UTF-8, a malformed JSON line, a missing, empty or non-text
prompt, a duplicate id, a file with no prompts at all.
"""

import csv
import io
import json
import os
from typing import NamedTuple

from gvu_jax.infra.errors import InputError

FORMATS = (".txt", ".jsonl", ".csv")
_JSON_TYPES = {int: "number", float: "number", bool: "boolean", list: "array", dict: "object",
               type(None): "null", str: "string"}
UNTAGGED = "prompts"   # the category of a prompt whose file gives none


class Prompt(NamedTuple):
  """A prompt with no labels: GvU needs only its text (categories, when known,
  balance the prompt batches); `meta` carries what the file said besides."""
  text: str
  category: str = UNTAGGED
  id: str = ""
  meta: tuple = ()   # sorted (key, JSON text) pairs: hashable, comparable


def read(path):
  """The prompts of the file at `path` (format from its extension)."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise InputError(f"{path}: unknown prompt file type {ext or '(none)'!r}; "
                     f"expected one of {list(FORMATS)}")
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such prompt file")
  with open(path, "rb") as f:
    raw = f.read()
  text = decode(path, raw)
  rows = {".txt": _txt_rows, ".jsonl": jsonl_objects, ".csv": _csv_rows}[ext](path, text)
  prompts, first_line = [], {}
  for line, fields in rows:
    prompt = _prompt(path, line, fields, len(prompts))
    if prompt.id in first_line:
      raise InputError(f"{path}:{line}: duplicate id {prompt.id!r} "
                       f"(first on line {first_line[prompt.id]})")
    first_line[prompt.id] = line
    prompts.append(prompt)
  if not prompts:
    raise InputError(f"{path}: the file holds no prompts")
  return prompts


def decode(path, raw):
  """A file's bytes -> its text, or one error naming the line and column of the
  first byte that is not UTF-8."""
  try:
    return raw.decode("utf-8-sig")   # a leading byte-order mark is not part of the text
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    raise InputError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                     f"{column})") from None


def lines(text):
  """(number, content) of each line: split at "\n" only, one trailing "\r" dropped
  (str.splitlines would also split at form feeds and U+2028)."""
  for number, content in enumerate(text.split("\n"), 1):
    yield number, content[:-1] if content.endswith("\r") else content


def _txt_rows(path, text):
  for line, content in lines(text):
    if content.strip() and not content.lstrip().startswith("#"):
      yield line, {"prompt": content}


def json_type(value):
  """A parsed JSON value's type as JSON names it ("array", "number", ...)."""
  return _JSON_TYPES.get(type(value), type(value).__name__)


def json_object(path, text, line=None):
  """The JSON object `text` holds (line `line` of `path`, or all of it), or one
  error naming path:line."""
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"{path}:{line or e.lineno}: not valid JSON ({e.msg} at column "
                     f"{e.colno})") from None
  if not isinstance(value, dict):
    raise InputError(f"{path}{f':{line}' if line else ''}: expected a JSON object, got "
                     f"{json_type(value)}")
  return value


def jsonl_objects(path, text):
  """(line number, object) of each non-blank line of a JSON-lines text."""
  for line, content in lines(text):
    if content.strip():
      yield line, json_object(path, content, line)


def _csv_rows(path, text):
  reader = csv.DictReader(io.StringIO(text))
  columns = reader.fieldnames or []
  if "prompt" not in columns and "text" not in columns:
    raise InputError(f"{path}:1: the header has no 'prompt' column (columns: {columns})")
  for fields in reader:
    if None in fields:
      raise InputError(f"{path}:{reader.line_num}: more values than the header's "
                       f"{len(columns)} columns")
    if any(v.strip() for v in fields.values() if v):
      yield reader.line_num, fields


def _prompt(path, line, fields, index):
  key = "prompt" if "prompt" in fields else "text"
  if key not in fields:
    raise InputError(f"{path}:{line}: no 'prompt' field (fields: {sorted(fields)})")
  text = fields[key]
  if not isinstance(text, str):
    raise InputError(f"{path}:{line}: {key!r} is a JSON {json_type(text)}, "
                     "expected a string")
  if not text.strip():
    raise InputError(f"{path}:{line}: empty prompt")
  category = fields.get("tag") or fields.get("category") or UNTAGGED
  ident = fields.get("id")
  ident = str(index) if ident in (None, "") else str(ident)
  known = {key, "id", "tag", "category"}
  meta = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in fields.items()
                      if k not in known))
  return Prompt(" ".join(text.split()), str(category), ident, meta)
