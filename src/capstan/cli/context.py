"""What CLI commands share: the settings object and lazily opened services.

A command's options may stand in for ``CAPSTAN_*`` variables for one invocation (``capstan run --backend
kubernetes``): `override_settings` records them in the click context, so they never outlive the command, and the
services are opened once per distinct settings.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any

import click

from capstan.settings import Settings

if TYPE_CHECKING:
    from capstan.services import Services

_OVERRIDES = "capstan.settings_overrides"


@cache
def _env_settings() -> Settings:
    return Settings.from_env()


def cli_settings() -> Settings:
    """Settings for this CLI invocation: read once from the environment, with the running command's overrides."""
    ctx = click.get_current_context(silent=True)
    changes: dict[str, Any] | None = ctx.meta.get(_OVERRIDES) if ctx is not None else None
    base = _env_settings()
    return replace(base, **changes) if changes else base


def override_settings(**changes: Any) -> None:
    """Settings fields the running command's options set in place of their ``CAPSTAN_*`` variables."""
    click.get_current_context().meta.setdefault(_OVERRIDES, {}).update(changes)


_OPENED: dict[Settings, Services] = {}
"""The services of this process's CLI invocations, by settings (one entry unless a command overrides some)."""


def cli_services() -> Services:
    """Local stores for this CLI invocation (opened on first use, migrations applied)."""
    settings = cli_settings()
    if settings not in _OPENED:
        from capstan.services import Services

        _OPENED[settings] = Services.open(settings)
    return _OPENED[settings]


def reset() -> None:
    """Close the services opened and forget the settings read (a new invocation in the same process, as in tests
    that change the environment between commands)."""
    for services in _OPENED.values():
        services.close()
    _OPENED.clear()
    _env_settings.cache_clear()
