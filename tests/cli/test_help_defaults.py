"""`aia CMD --help` shows every option's default (issue: `aia answer --help` hid --max-new-tokens')."""

from __future__ import annotations

import argparse

from aia.cli import build_parser


def test_every_option_with_a_default_shows_it_in_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    hidden = []
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if (
                not action.option_strings
                or action.help == argparse.SUPPRESS
                or action.default in (None, False, argparse.SUPPRESS)
            ):
                continue
            if "default" not in formatter._expand_help(action).lower():
                hidden.append(f"aia {name} {action.option_strings[-1]} (default {action.default!r})")
    assert commands and not hidden, hidden
