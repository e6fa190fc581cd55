"""The CLI's help, walked through the real argparse parser: every subcommand says what it does, every flag says
what it changes, ``-v`` works after the subcommand too, and every command with output has ``--json``."""

from __future__ import annotations

import argparse

import pytest

from shared import cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_has_a_description_and_every_flag_a_help_text() -> None:
    missing = []
    for name, command in _commands().items():
        if not (command.description or "").strip():
            missing.append(f"{name}: no description")
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help text")
    assert missing == []


@pytest.mark.parametrize("name", sorted(_commands()))
def test_verbose_is_accepted_after_every_subcommand(name: str) -> None:
    parser = cli.build_parser()
    args = parser.parse_args([name, "-v"])
    assert args.verbose is True
    assert parser.parse_args(["-v", name]).verbose is True  # before it, as before
    assert parser.parse_args([name]).verbose is False


def test_subscribe_has_json_like_the_rest() -> None:
    with_output = {"subscribe", "status", "reconcile", "plan", "approve", "adopt", "check"}
    for name in with_output:
        assert "--json" in _commands()[name]._option_string_actions, name
