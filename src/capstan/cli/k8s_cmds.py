"""``capstan k8s``: render Capstan's specs to Kubernetes manifests, validate manifests strictly, apply them, and run
a deployment's router on a cluster. Each part of the group lives in its own module, named in `PARTS`, which exposes
``register(group: click.Group) -> None``."""

from __future__ import annotations

import importlib

import click

PARTS: tuple[str, ...] = ("capstan.cli.k8s_validate", "capstan.cli.k8s_render", "capstan.cli.k8s_render_pipeline",
                         "capstan.cli.k8s_render_job", "capstan.cli.k8s_render_project",
                         "capstan.cli.k8s_render_dataset", "capstan.cli.k8s_render_study",
                         "capstan.cli.k8s_render_deployment", "capstan.cli.k8s_router",
                         "capstan.cli.k8s_apply")
"""Modules that add ``capstan k8s`` subcommands."""


def register(cli: click.Group) -> None:
    """Add the ``k8s`` group and its subcommands."""

    @cli.group("k8s")
    def k8s() -> None:
        """Kubernetes: render specs to manifests, validate them against the official schemas and CRDs, apply them,
        and run a deployment's router. `capstan run --backend kubernetes` runs pipelines on a cluster."""

    for name in PARTS:
        importlib.import_module(name).register(k8s)
