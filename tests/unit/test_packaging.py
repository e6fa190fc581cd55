"""What ships where: the function app package (.funcignore) holds the app and no dev tooling; the agent's
host options inside the package match the deployment's host.json; the CLI tells its version and says plainly
when a command needs a source checkout. The wheel itself is built and run in
tests/integration/test_installed_wheel.py."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from importlib import metadata
from pathlib import Path

import pathspec
import pytest

from devtools.runner import HostOptions
from shared import cli

ROOT = Path(__file__).resolve().parents[2]
#: The only files the Functions deployment needs (README's layout): everything else must be ignored.
APP_FILES = {"function_app.py", "host.json", "requirements.txt"}
#: Folders and files a developer's tree has besides the tracked ones, whether or not they exist right now.
LOCAL_ONLY = (".venv/bin/python", ".tools/node_modules/azurite/package.json", "build/lib/shared/cli.py",
              "dist/guestsync-0.1.0-py3-none-any.whl", "guestsync.egg-info/PKG-INFO", ".demo/samba/smb.conf",
              ".pytest_cache/README.md", ".mypy_cache/3.11/shared.json", ".ruff_cache/CACHEDIR.TAG",
              ".hypothesis/examples/x", "docs/agent.md", "local.settings.json", "guestsync_env/bin/python",
              "shared/__pycache__/cli.cpython-311.pyc", ".git/HEAD")
DEV_TOOLING = ("devtools/graphsim/server.py", "devtools/demo.py", "devtools/runner.py", "devtools/localenv/samba.py",
               "bench/__main__.py", "tests/conftest.py", ".tools/node_modules/.bin/azurite", ".venv/bin/python",
               "docs/agent.md", "Makefile", "pyproject.toml", "requirements-dev.txt")


def _funcignore() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text(encoding="utf-8").splitlines())


def _deployed(spec: pathspec.PathSpec, path: str) -> bool:
    """Whether Core Tools / azd would zip ``path`` (relative, POSIX): no ignored folder above it, not ignored."""
    parts = path.split("/")
    folders = ("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
    return not any(spec.match_file(folder) for folder in folders) and not spec.match_file(path)


def _tree_files() -> list[str]:
    """Every file of this tree (ignored folders are not walked into, as the packager does not)."""
    spec = _funcignore()
    found: list[str] = []
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        dirs[:] = [d for d in dirs if not spec.match_file(f"{prefix}{d}/")]
        found += [prefix + f for f in files]
    return found


@pytest.mark.parametrize("path", DEV_TOOLING)
def test_funcignore_drops_dev_tooling(path: str) -> None:
    assert not _deployed(_funcignore(), path), f"{path} would be deployed with the function app"


def test_the_function_package_is_the_app_and_nothing_else() -> None:
    spec = _funcignore()
    deployed = {p for p in [*_tree_files(), *LOCAL_ONLY] if _deployed(spec, p)}
    strays = sorted(p for p in deployed if p not in APP_FILES and not p.startswith("shared/"))
    assert not strays, f"add these to .funcignore, the function app does not need them: {strays}"
    assert deployed >= APP_FILES and "shared/functions.py" in deployed
    assert not any(p.endswith(".pyc") for p in deployed)


def test_packaged_host_options_match_the_deployments_host_json() -> None:
    """The agent cannot read host.json from a repository root: its copy in the package must say the same."""
    packaged = Path(str(cli._host_json()))
    assert packaged.parent == Path(cli.__file__).parent, "the host options ship inside the package"
    assert HostOptions.load(packaged) == HostOptions.load(ROOT / "host.json")
    assert HostOptions.load(packaged).queues.max_dequeue_count == 5


def test_version_is_the_installed_distributions() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert out.getvalue().strip() == f"guestsync {metadata.version('guestsync')}"


def test_version_in_a_checkout_that_was_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    import tomllib

    expected = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert cli.version() == f"{expected} (source checkout)"


def _without_dev_tooling(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an installed wheel has: no devtools package at all."""
    monkeypatch.setitem(sys.modules, "devtools", None)
    for name in [n for n in sys.modules if n.startswith("devtools.")]:
        monkeypatch.delitem(sys.modules, name)


def test_demo_without_devtools_says_it_needs_a_checkout(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _without_dev_tooling(monkeypatch)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the demo needs a source checkout" in err[0] and "make demo" in err[0]


def test_serve_without_devtools_says_it_needs_a_checkout(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The local Functions runner is dev tooling: an installed agent cannot serve the app, and says so."""
    _without_dev_tooling(monkeypatch)
    assert cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serve needs a source checkout" in err[0] and "devtools/" in err[0], err


def test_the_product_imports_dev_tooling_only_where_serve_and_demo_need_it() -> None:
    """shared/ must work without devtools/ (the wheel leaves it out): its only imports are the lazy ones in
    the two commands that say so when it is missing."""
    import ast

    found = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT).as_posix()}: {n}" for n in names if n.split(".")[0] == "devtools"]
    assert found == ["shared/cli.py: devtools.runner", "shared/cli.py: devtools.demo"]
