"""Public names of a package imported at their first use (PEP 562).

``import aia`` and ``aia --help`` then load neither torch nor transformers; the package's
``__init__`` lists where each name lives, imports those modules only under
``TYPE_CHECKING`` (for readers and type checkers), and ends with::

    __getattr__, __dir__ = lazy_names(__name__, {"aia.core.loss": ("aia_loss", "huber")})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["lazy_names"]


def lazy_names(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names ``modules`` maps as
    ``{module: names it defines}``. A name is imported on first access and then kept in the
    package, so later lookups are ordinary attribute lookups."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
