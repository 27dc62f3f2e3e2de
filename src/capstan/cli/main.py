"""The ``capstan`` command line. Each subsystem contributes its commands through a ``register(cli)`` function."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from capstan.errors import CapstanError

# Modules that add commands; each exposes ``register(cli: click.Group) -> None``.
COMMAND_MODULES = (
    "capstan.cli.server_cmds",
    "capstan.cli.tracking_cmds",
    "capstan.cli.pipeline_cmds",
    "capstan.cli.queue_cmds",
    "capstan.cli.serve_cmds",
    "capstan.cli.deployment_cmds",
    "capstan.cli.training_cmds",
    "capstan.cli.finetune_cmds",
    "capstan.cli.tuning_cmds",
    "capstan.cli.describe_cmds",
    "capstan.cli.k8s_cmds",
    "capstan.cli.worker_cmds",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="capstan")
def cli() -> None:
    """Capstan: pipelines, a workload queue, experiment tracking, a model registry and serving in one package.

    State lives under CAPSTAN_HOME (default ~/.capstan). Set CAPSTAN_URL to talk to a remote `capstan server`.
    """


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: typed errors become one line on stderr and exit status 1."""
    try:
        return cli.main(args=argv, prog_name="capstan", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except CapstanError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (``capstan runs list | head``): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # the machine said no (a full disk, a permission): one line naming the file
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
