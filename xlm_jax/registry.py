"""Name -> implementation registries, filled lazily by importing a module.

Experiment files name their objectives and evaluators by string (big_vision style). A registry
looks the name up and, the first time, imports `<package>.<name>` so that the module's
`@REGISTRY.register(...)` decorator runs. Adding an objective therefore means adding one file,
named after the key it registers (`mlm_code_switch.py` registers "mlm_code_switch"): a module
under another name is found only by importing the whole package, which a typo'd key then pays
for as well. Modules holding shared helpers (objectives/masking.py, mlm_core.py, ...) register
nothing and are never looked up by name.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable


class Registry:
  """A mapping from names to objects that modules add to with a decorator."""

  def __init__(self, kind: str, package: str):
    self.kind = kind
    self.package = package
    self._entries: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def decorator(obj):
      if name in self._entries and self._entries[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return decorator

  def _import_all(self) -> None:
    pkg = importlib.import_module(self.package)
    for info in pkgutil.iter_modules(pkg.__path__):
      importlib.import_module(f"{self.package}.{info.name}")

  def get(self, name: str) -> Any:
    if name not in self._entries:
      try:
        importlib.import_module(f"{self.package}.{name}")
      except ModuleNotFoundError as e:
        if e.name != f"{self.package}.{name}":
          raise
    if name not in self._entries:
      # The name may live in a module with another name (evaluation/heldout_mlm.py registers
      # "mlm"); importing everything once also lists every name for the error below.
      self._import_all()
    if name not in self._entries:
      close = difflib.get_close_matches(name, self.names(), n=3)
      hint = f" Did you mean {close}?" if close else ""
      raise ValueError(
          f"unknown {self.kind} {name!r}; registered: {sorted(self.names())}.{hint}")
    return self._entries[name]

  def names(self) -> list[str]:
    return list(self._entries)


OBJECTIVES = Registry("objective", "xlm_jax.objectives")
EVALUATORS = Registry("evaluator", "xlm_jax.evaluation")
