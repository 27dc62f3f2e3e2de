"""``capstan k8s validate DIR_OR_FILE``: strict validation of manifests against the official Kubernetes schemas
and the CRDs in ``--crds`` folders, one line per error (`capstan.k8s.validate`). See ``docs/kubernetes.md``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capstan.errors import InvalidParameterValue
from capstan.k8s.validate import DEFAULT_K8S_VERSION, Manifest, ValidationError


def _where(manifest: Manifest, error: ValidationError) -> str:
    doc = f"#{manifest.number}" if manifest.documents_in_file > 1 else ""
    what = f"{error.kind or '?'}/{error.name or '?'}"
    field = f" {error.path}:" if error.path else ""
    return f"{manifest.file}{doc} {what}:{field}"


def register(group: click.Group) -> None:
    """Add ``validate`` to the ``capstan k8s`` group."""

    @group.command("validate")
    @click.argument("target", metavar="DIR_OR_FILE", type=click.Path(path_type=Path))
    @click.option("--k8s-version", default=DEFAULT_K8S_VERSION, show_default=True,
                  help="Kubernetes release whose OpenAPI schema built-in kinds are checked against (MAJOR.MINOR).")
    @click.option("--crds", "crd_dirs", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder of CustomResourceDefinition YAML files (searched recursively); repeatable.")
    def validate(target: Path, k8s_version: str, crd_dirs: tuple[Path, ...]) -> None:
        """Check every *.yaml, *.yml and *.json manifest under DIR_OR_FILE strictly: unknown fields, wrong types,
        missing required fields, kinds with neither a built-in schema nor a CRD, and the CRDs' CEL rules.

        Prints one line per error (FILE[#DOC] KIND/NAME: FIELD: MESSAGE) and exits 1 when there is any."""
        from capstan.k8s.crds import load_crds
        from capstan.k8s.validate import check_documents, read_manifests

        crds = load_crds(list(crd_dirs))
        manifests = read_manifests(target)
        if not manifests:
            raise InvalidParameterValue(f"{target}: no *.yaml, *.yml or *.json manifests found")
        report = check_documents([m.document for m in manifests], k8s_version=k8s_version, crds=crds)
        for warning in report.warnings:
            click.echo(f"warning: {_where(manifests[warning.index], warning)} {warning.message}", err=True)
        for error in report.errors:
            click.echo(f"{_where(manifests[error.index], error)} {error.message}")
        files = len({m.file for m in manifests})
        if report.errors:
            bad = len({e.index for e in report.errors})
            click.echo(f"{len(report.errors)} error(s) in {bad} of {len(manifests)} document(s) "
                       f"(Kubernetes {report.schema_version} schemas, {len(crds)} CRD versions)", err=True)
            sys.exit(1)
        click.echo(f"ok: {len(manifests)} document(s) in {files} file(s) valid against the Kubernetes "
                   f"{report.schema_version} schemas and {len(crds)} CRD versions"
                   + (f" ({len(report.warnings)} CEL rule(s) not evaluated)" if report.warnings else ""))
