"""Typed dataclass fields: their documentation, their YAML values, their command-line flags.

Every config and command option of the package is a dataclass (the run config of ``aia
train``, the eval file of ``aia eval``, the options of ``aia profile`` / ``generate`` /
``answer`` / ``score``). A field's documentation is the string literal right after it (an
attribute docstring), as in :class:`aia.core.spans.SpanConfig`. From one definition (name,
type, default, documentation) this module derives:

* :func:`from_mapping`: the dataclass from a YAML mapping, unknown keys and values of the
  wrong type failing with a :class:`~aia.errors.ConfigError` that names the key;
* :func:`describe`: ``key (default): documentation`` lines (``--help-config``);
* :func:`add_flags` / :func:`from_flags`: one argparse flag per field, its help the field's
  documentation and its default, and the dataclass back from the parsed flags.

Field ``metadata`` shapes a flag: ``positional`` (an argument, not a ``--flag``),
``choices``, ``aliases`` (more flag spellings), ``group`` (a titled group in ``--help``).
A field whose type is a dataclass contributes that dataclass's fields as flags of their own
names; its metadata may narrow them (``only``) and give their ``choices`` and ``aliases``
as ``{field name: ...}``.

Nothing here imports torch or transformers, so ``aia --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from typing import Any

from aia.errors import ConfigError

__all__ = ["Raw", "add_flags", "coerce", "describe", "field_docs", "from_flags", "from_mapping", "type_hints"]


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


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The field types of ``cls``, evaluated (annotations are strings under ``from __future__``)."""
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    """A field's default, or :data:`dataclasses.MISSING` for a required one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if len(options) == 1 and len(options) < len(typing.get_args(tp)):
            return options[0], True
    return tp, False


# ----------------------------------------------------------------- YAML values
class Raw(str):
    """A command-line override value: YAML-parsed unless the field is a string."""


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the type ``tp`` (and converted where YAML reads it loosely).

    Raises:
        ConfigError: naming ``key``, when the value does not fit the type.
    """
    if isinstance(value, Raw):
        import yaml

        if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)):
            if value.strip().lower() not in ("null", "~"):
                return str(value)
        value = yaml.safe_load(value) if value.strip() else ""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)
    if origin is dict:
        if value is None:  # a YAML key with nothing under it
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            hint = " (YAML reads yes/no/on/off as booleans: quote the word)" if isinstance(value, bool) else ""
            raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_mapping(cls: type, data: Any, prefix: str = ""):
    """The dataclass ``cls`` from a mapping (``None``: every default), each value checked by
    :func:`coerce`; ``prefix`` is the mapping's own key, for the messages.

    Raises:
        ConfigError: an unknown or missing key, a value of the wrong type, or a value the
            dataclass's own check refuses; the message names the key.
    """

    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{key(unknown[0])}: unknown key (known: {', '.join(fields)})")
    missing = [name for name, f in fields.items() if _default(f) is dataclasses.MISSING and name not in data]
    if missing:
        raise ConfigError(f"{key(missing[0])}: required")
    hints = type_hints(cls)
    values = {name: coerce(value, hints[name], key(name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ValueError as err:  # the dataclass's own check (e.g. SpanConfig's)
        if isinstance(err, ConfigError) and err.field is not None:
            raise ConfigError(err.reason, field=key(err.field)) from None
        named = [name for name in values if name in str(err)]
        raise ConfigError(f"{key(named[0]) if named else prefix or 'config'}: {err}") from None


def describe(cls: type, prefix: str = "") -> list[str]:
    """``key (default): documentation`` per field of ``cls``, nested dataclasses by their
    fields; a ``dict[str, Dataclass]`` field as ``key.<name>.field``."""
    docs, hints, lines = field_docs(cls), type_hints(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp, default = hints[f.name], _default(f)
        shown = "required" if default is dataclasses.MISSING else repr(default)
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, key)
            continue
        lines.append(f"{key} ({shown}): {docs.get(f.name, '')}")
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            lines += describe(typing.get_args(tp)[1], f"{key}.<name>")
    return lines


# ----------------------------------------------------------------- command-line flags
def boolean(text: str) -> bool:
    """``true`` / ``false`` (a flag of a ``bool | None`` field, whose None means "the default's")."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def plain(text: str) -> str:
    """``text`` without reStructuredText markup (``:class:`x``` -> ``x``, double backquotes dropped)."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _help(doc: str, default: Any) -> str:
    """The field's doc with its default, as argparse takes it (``%`` escaped)."""
    doc = plain(doc)
    if default is not dataclasses.MISSING and "default" not in doc.lower():
        shown = "none" if default is None else ("off" if default is False else default)
        doc = f"{doc} (default: {shown})"
    return doc.replace("%", "%%")


def _add_flag(parser, f: dataclasses.Field, tp: Any, doc: str, *, choices=None, aliases=(), default=None,
              positional=False) -> None:
    base, optional = _optional(tp)
    kwargs: dict[str, Any] = {"help": _help(doc, default)}
    if base is bool and not optional:
        kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    elif base is bool:
        kwargs.update(type=boolean, metavar="{true,false}")
    elif base in (int, float, str):
        kwargs["type"] = base
    else:
        raise TypeError(f"{f.name}: no command-line flag for type {tp}")
    if choices is not None:
        kwargs["choices"] = choices
    if positional:
        if default is not dataclasses.MISSING:
            kwargs.update(nargs="?", default=default)
        parser.add_argument(f.name, **kwargs)
        return
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument("--" + f.name.replace("_", "-"), *aliases, dest=f.name, **kwargs)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag (or positional argument) per field of the dataclass ``cls`` (module doc)."""
    docs, hints, groups = field_docs(cls), type_hints(cls), {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):  # its fields, flattened
            inner_docs, inner_hints = field_docs(tp), type_hints(tp)
            for g in dataclasses.fields(tp):
                if "only" in meta and g.name not in meta["only"]:
                    continue
                _add_flag(target, g, inner_hints[g.name], inner_docs.get(g.name, ""),
                          choices=meta.get("choices", {}).get(g.name), aliases=meta.get("aliases", {}).get(g.name, ()),
                          default=_default(g))
            continue
        _add_flag(target, f, tp, docs.get(f.name, ""), choices=meta.get("choices"), aliases=meta.get("aliases", ()),
                  default=_default(f), positional=meta.get("positional", False))


def from_flags(cls: type, args: argparse.Namespace):
    """The dataclass ``cls`` from the flags :func:`add_flags` made (a nested dataclass from its
    flags, its fields without a flag at their defaults)."""
    hints, values = type_hints(cls), {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names = f.metadata.get("only") or [g.name for g in dataclasses.fields(tp)]
            values[f.name] = tp(**{name: getattr(args, name) for name in names})
        else:
            values[f.name] = getattr(args, f.name)
    return cls(**values)
