"""The package's shape: every module imports on its own, the import graph has no
cycles, and the parts depend on each other only one way (docs/design.md §5)."""

import ast
import os
import subprocess
import sys

from helpers_run import REPO

PACKAGE = os.path.join(REPO, "gvu_jax")


def modules():
  """Dotted name -> file of every module of the package."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def import_graph():
  """Module -> the package's modules it imports (anywhere in the file, function
  bodies too; `from a import b` counts as a.b when b is a module)."""
  mods = modules()
  graph = {}
  for name, path in mods.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          targets.add(sub if sub in mods else node.module)
    graph[name] = {t for t in targets if t in mods and t != name}
  return graph


def cycles(graph):
  """Every import cycle, as a list of modules (depth-first search)."""
  found, state = [], {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        found.append(path[path.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return found


def test_the_import_graph_has_no_cycles():
  assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_parts_depend_one_way():
  """The world uses none of data/, evaluation/, models/; models/ reads no data."""
  rules = {"gvu_jax.world": ("gvu_jax.data", "gvu_jax.evaluation", "gvu_jax.models"),
           "gvu_jax.models": ("gvu_jax.data", "gvu_jax.evaluation")}
  wrong = [(m, t) for m, targets in import_graph().items() for part, banned in rules.items()
           if m.startswith(part) for t in targets if t.startswith(banned)]
  assert wrong == []


def test_every_module_imports_on_its_own():
  """Each module imported alone (the package's other modules forgotten first), so
  none depends on another having been imported before it."""
  script = """
import importlib, sys
from absl import flags
failed = []
for name in sys.argv[1:]:
  for loaded in [m for m in sys.modules if m == "gvu_jax" or m.startswith("gvu_jax.")]:
    del sys.modules[loaded]
  for flag in [f for f in list(flags.FLAGS) if (flags.FLAGS.find_module_defining_flag(f) or "")
               .startswith("gvu_jax")]:
    delattr(flags.FLAGS, flag)
  try:
    importlib.import_module(name)
  except Exception as e:
    failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
"""
  names = sorted(m for m in modules() if not m.endswith("__main__"))
  proc = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == ""
