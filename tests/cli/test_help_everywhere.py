"""Every command and sub-command answers --help (exit 0, a usage line, a description)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from capstan.cli.main import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


ALL = _commands(cli)


def test_the_tree_is_complete() -> None:
    top = {path[0] for path in ALL}
    assert {"quickstart", "server", "experiments", "runs", "models", "users", "tokens", "audit", "events", "gc",
            "db", "run", "pipelines", "schedules", "logs", "queue", "why", "usage", "simulate"} <= top


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p))
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert (command.help or command.short_help or "").strip(), f"`capstan {' '.join(path)}` has no description"
