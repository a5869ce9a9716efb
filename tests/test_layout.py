"""The package's shape: every module imports on its own, the import graph has no
cycles, and the parts depend on each other only one way (docs/design.md §5)."""

import ast
import os
import subprocess
import sys

import pytest

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


# The package's folders from the bottom up (docs/design.md §5): a module imports
# its own folder and the folders of lower rank only. The top-level modules are the
# front doors (main and the command shims), free to import anything.
RANKS = {"infra": 0, "world": 1, "text": 2, "data": 2, "models": 3, "rl": 4, "interop": 5,
         "evaluation": 6, "stages": 7, "tools": 8}


def folder(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 2 or parts[-1] in RANKS else None


def against_the_direction(graph):
  """(module, import) pairs that go up or sideways between folders, or into rl/
  from the world's judge outside rl/controls.py."""
  wrong = []
  for module, targets in graph.items():
    here = folder(module)
    if here is None:
      continue
    for target in sorted(targets):
      there = folder(target)
      if there is None or (there != here and RANKS[there] >= RANKS[here]):
        wrong.append((module, target))
      elif here == "rl" and there == "world" and module != "gvu_jax.rl.controls":
        wrong.append((module, target))
  return sorted(wrong)


def test_the_folders_depend_one_way():
  graph = import_graph()
  assert set(filter(None, map(folder, graph))) == set(RANKS)   # every folder has a rank
  assert against_the_direction(graph) == []


@pytest.mark.parametrize("graph, wrong", [
    ({"gvu_jax.infra.files": {"gvu_jax.models.build"}},
     [("gvu_jax.infra.files", "gvu_jax.models.build")]),                  # up
    ({"gvu_jax.text.janus": {"gvu_jax.data.suites"}},
     [("gvu_jax.text.janus", "gvu_jax.data.suites")]),                    # sideways
    ({"gvu_jax.stages.gvu": {"gvu_jax.main"}}, [("gvu_jax.stages.gvu", "gvu_jax.main")]),
    ({"gvu_jax.rl.step": {"gvu_jax.world.judge"}}, [("gvu_jax.rl.step", "gvu_jax.world.judge")]),
    ({"gvu_jax.rl.controls": {"gvu_jax.world.judge"}, "gvu_jax.main": {"gvu_jax.tools.bench"},
      "gvu_jax.stages.gvu": {"gvu_jax.rl.step", "gvu_jax.stages.context"}}, []),
])
def test_the_direction_rules_find_what_goes_against_them(graph, wrong):
  assert against_the_direction(graph) == wrong


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


def module_map():
  """The files docs/design.md §5's module map names, as paths below the repository:
  each line's leading names (before two spaces), folders by their indentation."""
  with open(os.path.join(REPO, "docs", "design.md")) as f:
    text = f.read()
  block = text.split("## 5. Module map", 1)[1].split("```", 2)[1]
  named, stack = set(), []
  for line in block.splitlines():
    if not line.strip():
      continue
    indent = len(line) - len(line.lstrip())
    while stack and stack[-1][0] >= indent:
      stack.pop()
    parent = stack[-1][1] if stack else ""
    names = line.strip().split("  ")[0].split(" ")
    if names[0].endswith("/"):
      stack.append((indent, parent + names[0]))
    elif all(n.endswith(".py") for n in names):
      named |= {parent + n for n in names}
  return named


def test_the_module_map_names_every_module_of_the_tree():
  tree = {os.path.relpath(path, REPO) for path in modules().values()
          if not path.endswith("__init__.py")}
  named = module_map()
  assert sorted(tree - named) == [], "modules missing from docs/design.md §5"
  assert sorted(named - tree) == [], "docs/design.md §5 names modules that do not exist"
