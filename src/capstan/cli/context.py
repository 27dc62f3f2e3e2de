"""What CLI commands share: the settings object and lazily opened services."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from capstan.settings import Settings

if TYPE_CHECKING:
    from capstan.services import Services


@cache
def cli_settings() -> Settings:
    """Settings for this CLI invocation, read once from the environment."""
    return Settings.from_env()


@cache
def cli_services() -> Services:
    """Local stores for this CLI invocation (opened on first use, migrations applied)."""
    from capstan.services import Services

    return Services.open(cli_settings())
