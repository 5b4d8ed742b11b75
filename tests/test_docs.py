"""README.md and docs/ run as written, so they cannot drift from the code.

- every ``python`` block runs (in a scratch home, against the ``local`` site and the shipped
  files) unless an HTML comment ``<!-- not run: why -->`` right above it says why it cannot;
- every ``$ gpuhub ...`` line of a ``console`` block that shows its output is run, and its
  stdout then stderr must match the output shown (``...`` stands for any lines);
- every other ``gpuhub`` command in a code block is parsed by the real CLI (commands, options,
  option values), without running it;
- every ``yaml`` block that is a site file (or part of one) validates against `gpuhub sites schema`;
- the README's command table lists every command, and its site list every shipped site.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from gpuhub.cli import main

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if not match:
                i += 1
                continue
            start, lang = i, match.group(1)
            body = []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.search(above)
            out.append(Block(path, start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None))
            i += 1
    return out


BLOCKS = blocks()


def _ids(items: list[Block]) -> list[str]:
    return [b.where for b in items]


@pytest.fixture
def scratch(tmp_path: Path, isolated: Path) -> dict[str, str]:
    """Environment of a new user: an empty home, the checkout's code, jobs kept in tmp_path."""
    env = dict(os.environ)
    env.update(HOME=str(tmp_path / "home"), GPUHUB_LOCAL_JOBS_DIR=str(tmp_path / "jobs"),
               GPUHUB_LEDGER=str(tmp_path / "ledger.sqlite"), COLUMNS="200")
    env.pop("GPUHUB_SITE", None)
    (tmp_path / "home").mkdir()
    return env


# --- python blocks --------------------------------------------------------------------------------

PYTHON = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_block_runs(block: Block, scratch: dict[str, str]) -> None:
    if block.not_run:
        pytest.skip(f"not run: {block.not_run}")
    result = subprocess.run([sys.executable, "-c", block.text], cwd=REPO, env=scratch, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{block.where}: the example fails:\n{result.stderr}"


def test_python_blocks_found() -> None:
    runnable = [b for b in PYTHON if not b.not_run]
    assert any(b.path.name == "README.md" for b in runnable), "the README's Python API example is not run"


# --- console blocks with output -------------------------------------------------------------------


def console_examples() -> list[tuple[Block, str, list[str]]]:
    """(block, command, expected output lines) for every ``$ gpuhub`` line followed by output."""
    out = []
    for block in BLOCKS:
        if block.lang != "console":
            continue
        current: tuple[str, list[str]] | None = None
        for line in block.text.splitlines():
            if line.startswith("$ "):
                if current and current[1]:
                    out.append((block, *current))
                current = (line[2:], [])
            elif current is not None:
                current[1].append(line)
        if current and current[1]:
            out.append((block, *current))
    return [(b, cmd, expected) for b, cmd, expected in out if _words(cmd)[:1] == ["gpuhub"]]


def _words(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    return words


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; an expected ``...`` line matches any number of actual lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


CONSOLE = console_examples()


@pytest.mark.parametrize(("block", "command", "expected"), CONSOLE, ids=[f"{b.where}:{c[:50]}" for b, c, _ in CONSOLE])
def test_console_example_output(block: Block, command: str, expected: list[str], scratch: dict[str, str]) -> None:
    words = _words(command)
    argv = [sys.executable, "-m", "gpuhub", *words[1:]]
    result = subprocess.run(argv, cwd=REPO, env=scratch, capture_output=True, text=True, timeout=120)
    actual = (result.stdout + result.stderr).splitlines()
    assert matches(expected, actual), (
        f"{block.where}: `{command}` prints something else now:\n" + "\n".join(actual)
    )


def test_console_examples_found() -> None:
    assert len(CONSOLE) >= 2


# --- every other gpuhub command line parses --------------------------------------------------------

_SPLIT = {"&&", "||", "|", ";", ">", ">>", "<", "&", "(", ")"}


def command_lines() -> list[tuple[Block, list[str]]]:
    """Every ``gpuhub ...`` command (argv) written in a bash/sh/console block."""
    out = []
    for block in BLOCKS:
        if block.lang not in ("bash", "sh", "console", "shell"):
            continue
        text = block.text.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.removeprefix("$ ")
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token in _SPLIT:
                    words = _words(shlex.join(command)) if command else []
                    if words[:1] == ["gpuhub"]:
                        out.append((block, words))
                    command = []
                elif token:
                    command.append(token)
    return out


def parse(argv: list[str]) -> click.Context:
    """Resolve subcommands and parse options exactly as the CLI does, without invoking anything."""
    cmd: click.Command = main
    ctx = click.Context(main, info_name="gpuhub")
    args = argv[1:]
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.get_command(ctx, args[0])
        if sub is None:
            raise click.UsageError(f"no such command {args[0]!r}")
        if isinstance(sub, click.Group) and len(args) > 1 and not args[1].startswith("-"):
            ctx = click.Context(sub, info_name=args[0], parent=ctx)
        else:
            return sub.make_context(args[0], args[1:], parent=ctx)
        cmd, args = sub, args[1:]
    return cmd.make_context("gpuhub", args)


COMMANDS = command_lines()


@pytest.mark.parametrize(("block", "argv"), COMMANDS, ids=[f"{b.where}:{' '.join(a)[:60]}" for b, a in COMMANDS])
def test_documented_command_parses(block: Block, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    try:
        parse(argv)
    except click.exceptions.Exit:
        pass
    except click.ClickException as exc:
        pytest.fail(f"{block.where}: `{shlex.join(argv)}` is refused by the CLI: {exc.format_message()}")


def test_command_lines_found() -> None:
    assert len(COMMANDS) >= 10


# --- yaml blocks against the published schema ------------------------------------------------------

SITE_KEYS = {"scheduler", "connection", "defaults", "partitions", "network", "template", "account", "unverified"}
YAML = [b for b in BLOCKS if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=_ids(YAML))
def test_yaml_block_fits_site_schema(block: Block) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    data = yaml.safe_load(block.text)
    if not isinstance(data, dict) or not SITE_KEYS & set(data):
        pytest.skip("not a site file")
    schema = json.loads(_cli_output("sites", "schema"))
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]
    assert not errors, f"{block.where}: an editor using `gpuhub sites schema` flags this file: {errors}"


def _cli_output(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, check=True,
                            timeout=60)
    return result.stdout


# --- tables and lists that must stay complete -------------------------------------------------------


def _all_commands() -> list[str]:
    ctx = click.Context(main, info_name="gpuhub")
    names = []
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        names.append(name)
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, info_name=name, parent=ctx)
            names += [f"{name} {sub}" for sub in cmd.list_commands(sub_ctx)]
    return names


def test_readme_command_table_lists_every_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = [m.group(1) for m in re.finditer(r"^\| `gpuhub ([a-z -]+?)(?: [A-Z\[-].*?)?`", readme, re.M)]
    missing = [c for c in _all_commands() if not any(row == c or row.startswith(c + " ") for row in table)]
    groups = {c.split()[0] for c in _all_commands() if " " in c}
    missing = [c for c in missing if c not in groups or not any(r.startswith(c + " ") for r in table)]
    assert not missing, f"README.md's command table lacks: {missing}"


def test_readme_names_every_shipped_site() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Sites", 1)[1].split("\n## ", 1)[0]
    shipped = sorted(p.stem for p in (REPO / "site_configs").glob("*.yaml"))
    missing = [name for name in shipped if f"`{name}`" not in section]
    assert not missing, f"README.md's Sites section does not name: {missing}"


def test_readme_lists_every_job_option() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    render = main.get_command(click.Context(main), "render")
    documented = set(re.findall(r"`(--[a-z-]+)", readme))
    skip = {"--help", "--json", "--output-dir", "--site"}
    options = {opt for p in render.params if isinstance(p, click.Option) for opt in p.opts if opt.startswith("--")}
    missing = sorted(options - skip - documented)
    assert not missing, f"README.md's job options lack: {missing}"
