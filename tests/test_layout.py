"""The package's layout holds: wings that depend one way, no import circles, small modules.

Read from the source with ``ast`` (nothing is imported, no JAX): every ``vit_jax`` import,
at module level or inside a function, is an edge of the graph.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'vit_jax'
# Which wing may import which: the model stands alone, the trainer builds on it, the
# commands on both. The shims beside the folders keep earlier command lines working.
MAY_IMPORT = {'models': {'models'}, 'training': {'models', 'training'},
              'tools': {'models', 'training', 'tools'}}
SHIMS = {f'vit_jax.{name}' for name in ('bench', 'compare', 'report', 'verify', 'presets')}


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, modules: set) -> list[tuple[str, int, bool]]:
  """(imported vit_jax module, line, at module level) for every import in ``path``."""
  tree = ast.parse(path.read_text())
  top = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('vit_jax'):
      for alias in node.names:  # 'from vit_jax.training import data' names a module
        full = f'{node.module}.{alias.name}'
        found.append((full if full in modules else node.module, node.lineno, id(node) in top))
    elif isinstance(node, ast.Import):
      found += [(a.name, node.lineno, id(node) in top) for a in node.names
                if a.name.startswith('vit_jax')]
  return found


@pytest.fixture(scope='module')
def graph():
  files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  return files, {name: _imports(path, set(files)) for name, path in files.items()}


def test_wings_import_one_way(graph):
  _, edges = graph
  for name, imports in edges.items():
    parts = name.split('.')
    if len(parts) < 2 or name in SHIMS:
      continue
    for target, line, _ in imports:
      wing = target.split('.')[1]
      assert wing in MAY_IMPORT[parts[1]], f'{name}:{line} imports {target}'


def test_no_import_circles(graph):
  _, edges = graph
  state = {}

  def visit(name, path):
    state[name] = 'open'
    for target, line, _ in edges.get(name, []):
      if target == name or target not in edges:
        continue
      assert state.get(target) != 'open', ' -> '.join([*path, name, target])
      if target not in state:
        visit(target, [*path, name])
    state[name] = 'done'

  for name in sorted(edges):
    if name not in state:
      visit(name, [])


def test_imports_inside_functions_say_why(graph):
  """A lazy import is on purpose (a bad flag fails before JAX loads): a comment says so."""
  files, edges = graph
  for name, imports in edges.items():
    lines = files[name].read_text().splitlines()
    for target, line, top_level in imports:
      if not top_level and name not in SHIMS:
        said = lines[line - 1] + ''.join(lines[max(0, line - 3):line - 1])
        assert 'lazy' in said.lower(), f'{name}:{line} imports {target} inside a function'


def test_modules_are_short(graph):
  files, _ = graph
  long = {n: c for n, p in files.items() if (c := len(p.read_text().splitlines())) > 300}
  assert not long, long
