"""Documentation of dataclass fields, written once where the field is defined.

A field's documentation is the string literal right after it (an attribute docstring),
as in :class:`aia.core.spans.SpanConfig` and the run config sections; the CLI flags and
``aia train --help-config`` read it from there.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

__all__ = ["field_docs"]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its attribute docstring, on one line}`` of the dataclass ``cls``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
