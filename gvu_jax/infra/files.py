"""Files a run writes and reads back, kept whole through crashes and shared with
no other run.

write_atomic   a state file appears complete or not at all (written aside,
               flushed, renamed over the old one)
read_jsonl     the complete lines of a JSON-lines file; a line cut by a crash is
               dropped (and cut from the file), a malformed complete line is one
               error naming file:line
hold_workdir   an exclusive lock on the workdir while this process runs, so two
               runs never write into one workdir at once (release_workdirs
               removes the lock file on the way out)
"""

import fcntl
import json
import os

from gvu_jax.infra.errors import InputError

LOCK_FILE = ".gvu_jax.lock"
_held = {}   # workdir -> open lock file (closing it would release the lock)


def write_atomic(path, text):
  """Writes `text` to `path` so that a reader (or a crash) sees the old file or the
  new one, never a part of it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_jsonl(path, keep=None):
  """The records of a JSON-lines file, in order, up to and including the last
  whole line; a cut last line (a crash while appending) is removed from the file
  so the next append starts a line. `keep(record)`: records after the first it
  rejects are dropped from the file too (a resumed run rewrites them)."""
  if not os.path.isfile(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  records, end = [], 0
  for number, line in enumerate(data.split(b"\n")[:-1], 1):   # the last piece is cut or empty
    try:
      record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise InputError(f"{path}:{number}: not a JSON line ({e}); delete the file to "
                       "start it anew") from None
    if keep is not None and not keep(record):
      break
    records.append(record)
    end += len(line) + 1
  if end < len(data):
    with open(path, "r+b") as f:
      f.truncate(end)
  return records


def hold_workdir(workdir):
  """Takes the workdir's lock for the rest of this process, or one error naming
  the process that holds it."""
  if workdir in _held:
    return
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, "a+", encoding="utf-8")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "unknown"
    f.close()
    raise InputError(f"--workdir={workdir}: in use by another gvu_jax run (pid {holder}); "
                     "wait for it to finish or use another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(str(os.getpid()))
  f.flush()
  _held[workdir] = f


def release_workdirs():
  """Gives up every workdir lock this process holds and removes its lock file."""
  for workdir, f in list(_held.items()):
    try:
      os.remove(os.path.join(workdir, LOCK_FILE))
    except OSError:
      pass
    f.close()
    del _held[workdir]
