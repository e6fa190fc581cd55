"""The docs' command examples parse with the real CLI: a renamed flag or subcommand cannot linger in README.md or
docs/. (Every setting documented, and every documented setting read by the code: tests/unit/test_infra.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from shared.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_SPAN = re.compile(r"`(guestsync [^`]+)`")


def examples() -> list[tuple[str, str]]:
    """(page, command line) for every `guestsync ...` in a code block or an inline code span that is an example
    rather than a synopsis (no [optional] or a|b alternatives)."""
    found: list[tuple[str, str]] = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        lines = [line for block in _FENCE.findall(text) for line in block.splitlines()]
        lines += _SPAN.findall(text)
        for line in lines:
            command = re.sub(r"\s+#.*$", "", line).strip().removeprefix("$ ").removeprefix("PS> ")
            command = re.split(r"\s+(?:>>?|2>|\||&&|;)\s", command + " ")[0].strip()  # the shell's part is not ours
            if not command.startswith("guestsync ") or any(c in command for c in "[…"):
                continue
            found.append((page.name, command))
    return found


EXAMPLES = examples()


def test_the_docs_have_cli_examples() -> None:
    assert len(EXAMPLES) >= 20, EXAMPLES  # a search that finds nothing would let the next test pass vacuously


@pytest.mark.parametrize(("page", "command"), EXAMPLES, ids=[f"{p}: {c}" for p, c in EXAMPLES])
def test_cli_example_parses(page: str, command: str) -> None:
    argv = shlex.split(re.sub(r"<[^>]+>", "x", command))[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on an unknown flag or subcommand (and 0 on --help)
        assert exc.code == 0, f"{page}: `{command}` does not parse with guestsync's CLI"


def test_a_wrong_example_fails() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["approve", "--everything"])
    assert exc.value.code == 2
