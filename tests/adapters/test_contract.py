"""The adapter contract is :class:`aia.adapters.base.AdapterBase`, complete.

Every member the rest of the package reaches on an adapter is declared there (read from the
source: ``adapter.X``, ``self.adapter.X``, ``run.core.adapter.X``), never through a
``getattr`` default; every registered family subclasses it; a family that forgets its name or
one of the hooks without a default fails when it is defined or built, not in the middle of a run.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from aia.adapters import ADAPTERS, AdapterBase, get_adapter
from aia.adapters.base import AdapterBase as Base

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "aia"
#: the package's own adapter code, and the demo's family (which may use its own members)
OWN_FAMILIES = ("adapters/", "demo/")


def _is_adapter(node: ast.AST) -> bool:
    """``adapter`` or ``<anything>.adapter``."""
    return (isinstance(node, ast.Name) and node.id == "adapter") or (
        isinstance(node, ast.Attribute) and node.attr == "adapter"
    )


def _callers() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.relative_to(PACKAGE).as_posix().startswith(OWN_FAMILIES)
    ]


def declared_members() -> set[str]:
    """What AdapterBase declares: class attributes (annotated or set), methods, and what ``__init__`` sets."""
    names = {n for n in dir(Base) if not n.startswith("__")} | set(inspect.get_annotations(Base))
    init = ast.parse(inspect.getsource(Base.__init__).strip().replace("\n    ", "\n"))
    for node in ast.walk(init):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    names.add(t.attr)
    return names


def test_every_member_the_package_uses_is_declared():
    used: dict[str, list[str]] = {}
    for where, tree in _callers():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_adapter(node.value):
                used.setdefault(node.attr, []).append(f"{where}:{node.lineno}")
    assert {"encode", "collate", "forward", "decode_runner", "generation_settings", "cfg_drop"} <= set(used)
    undeclared = {name: places for name, places in used.items() if name not in declared_members()}
    assert not undeclared, f"adapter members used but not declared by AdapterBase: {undeclared}"


def test_no_getattr_default_on_an_adapter():
    found = [
        f"{where}:{node.lineno}"
        for where, tree in _callers()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
        and node.args and _is_adapter(node.args[0])
    ]
    assert not found, f"getattr/hasattr on an adapter (declare the member on AdapterBase): {found}"


def test_every_family_subclasses_the_contract():
    import aia.demo  # noqa: F401  (registers the demo's family)
    from aia.adapters.loading import _MARKED

    families = {*ADAPTERS.values(), *_MARKED.values()}
    assert len(families) >= 5
    for cls in families:
        assert issubclass(cls, AdapterBase), cls
        assert cls.family and set(cls.tasks) <= {"und", "gen"}
        assert not inspect.isabstract(cls), f"{cls.__name__} leaves {sorted(cls.__abstractmethods__)} unimplemented"
        if cls.prompt_defaults is not None:  # every choice sourced, the CFG drop with them
            assert all(v is not None for k, v in vars(cls.prompt_defaults).items() if k != "system_prompt"), cls


def test_a_family_without_name_or_hook_fails_early(tiny_model):
    with pytest.raises(TypeError, match="must set the class attribute family"):
        type("Nameless", (AdapterBase,), {})

    class NoForward(AdapterBase):
        family = "no-forward"

        def encode(self, record, task, base_dir, image=None, *, cfg_blank=False): ...

        def language_model(self, model): ...

        def decode_runner(self, model, task): ...

    model, processor = tiny_model
    with pytest.raises(TypeError, match="forward"):
        NoForward(model, processor)
    assert type(get_adapter(model, processor)).family in ("janus", "emu3", "chameleon")
