"""The layers' import rules, read from the source, so they stay true.

data_prep -> xlm_jax/data -> models -> objectives -> train -> evaluation / export: a lower layer
never imports a higher one. Checked on every `import` statement (deferred ones inside functions
too), not on what happens to be loaded.
"""
import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Package -> packages it must never import.
FORBIDDEN = {
    "xlm_jax.data": ("xlm_jax.models", "xlm_jax.objectives", "xlm_jax.train", "xlm_jax.evaluation",
                     "xlm_jax.export", "data_prep"),
    "xlm_jax.models": ("xlm_jax.objectives", "xlm_jax.train", "xlm_jax.evaluation",
                       "xlm_jax.export", "data_prep"),
    "xlm_jax.objectives": ("xlm_jax.train", "xlm_jax.evaluation", "xlm_jax.export", "data_prep"),
    "xlm_jax.evaluation": ("xlm_jax.train", "data_prep"),
    "xlm_jax.export": ("xlm_jax.train", "xlm_jax.evaluation", "data_prep"),
    "xlm_jax.train": ("data_prep",),
    "data_prep": ("xlm_jax.models", "xlm_jax.objectives", "xlm_jax.train", "xlm_jax.evaluation",
                  "xlm_jax.export"),
}
# The one module allowed to reach data_prep: the command layer dispatching `xlm-jax data`.
COMMAND_LAYER = "xlm_jax.cli"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every module named by an import statement of `path` (relative imports resolved)."""
  tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      out.add(module)
      out.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
  return out


def _sources():
  for root in ("xlm_jax", "data_prep"):
    yield from sorted((REPO / root).rglob("*.py"))


def _inside(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def test_no_layer_imports_a_higher_one():
  broken = []
  for path in _sources():
    name = _module_name(path)
    if name == COMMAND_LAYER:
      continue
    for package, banned in FORBIDDEN.items():
      if not _inside(name, package):
        continue
      for imported in _imports(path):
        hit = [b for b in banned if _inside(imported, b)]
        if hit:
          broken.append(f"{path.relative_to(REPO)} imports {imported} ({package} must not "
                        f"import {hit[0]})")
  assert not broken, "\n".join(broken)


def test_only_the_command_layer_reaches_data_prep():
  reaching = [str(p.relative_to(REPO)) for p in _sources()
              if _inside(_module_name(p), "xlm_jax") and _module_name(p) != COMMAND_LAYER
              and any(_inside(m, "data_prep") for m in _imports(p))]
  assert reaching == []


def test_no_cycle_between_packages():
  """Package-level graph (xlm_jax.data, xlm_jax.train, data_prep, ...) has no cycle."""
  def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "data_prep":
      return "data_prep"
    if parts[0] == "xlm_jax" and len(parts) > 1:
      candidate = "xlm_jax." + parts[1]
      return candidate if (REPO / "xlm_jax" / parts[1]).is_dir() else None
    return None

  edges: dict[str, set[str]] = {}
  for path in _sources():
    source = package_of(_module_name(path))
    if source is None or _module_name(path) == COMMAND_LAYER:
      continue
    for imported in _imports(path):
      target = package_of(imported)
      if target and target != source:
        edges.setdefault(source, set()).add(target)

  def visit(node, stack):
    if node in stack:
      return stack[stack.index(node):] + [node]
    for nxt in sorted(edges.get(node, ())):
      cycle = visit(nxt, stack + [node])
      if cycle:
        return cycle
    return None

  for start in sorted(edges):
    cycle = visit(start, [])
    assert cycle is None, " -> ".join(cycle)


def test_importing_the_trainer_loads_no_data_prep_module():
  code = ("import sys, xlm_jax.train.trainer; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'data_prep'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout
