"""``capstan k8s apply DIR|SOURCE``: server-side apply (field manager ``capstan``) of the manifests ``capstan k8s
render`` wrote, or of a pipeline rendered on the fly. Everything is validated first (`capstan.k8s.validate`,
strict); a manifest the API server refuses prints the server's message with the field; an unreachable cluster or
a missing context is one line (docs/kubernetes-executor.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from capstan.errors import InvalidParameterValue

_FIRST = ("Namespace", "CustomResourceDefinition")


def _order(doc: dict[str, Any]) -> int:
    """Namespaces (and CRDs) before what lives in them, then the other cluster-wide objects, then the rest."""
    from capstan.k8s.client import ref_of

    kind = str(doc.get("kind", ""))
    if kind in _FIRST:
        return 0
    return 2 if ref_of(doc).namespaced else 1


def _is_source(target: str) -> bool:
    file = target.rpartition(":")[0] if target.count(":") and not Path(target).exists() else target
    return file.endswith(".py")


def _render_source(target: str, params: tuple[str, ...], image: str | None, project: str) -> list[dict[str, Any]]:
    from capstan.k8s.pipeline_jobs import step_jobs
    from capstan.k8s.render_pipelines import DEFAULT_IMAGE, JobOptions, render_pipeline_jobs
    from capstan.pipelines.loader import load_pipeline
    from capstan.pipelines.params import parse_assignments

    given = parse_assignments(params)
    pipe, canonical = load_pipeline(target)
    ref = target if ":" in target.rpartition("/")[2] else f"{target}:{canonical.rpartition(':')[2]}"
    steps = step_jobs(pipe.build(given), ref, None, given)
    return render_pipeline_jobs(steps, JobOptions(project=project, image=image or DEFAULT_IMAGE))


def _documents(target: str, params: tuple[str, ...], image: str | None, project: str,
               crd_dirs: tuple[Path, ...], k8s_version: str) -> list[dict[str, Any]]:
    """The manifests to apply, validated strictly (a problem ends the command before the cluster is asked)."""
    from capstan.k8s.crds import load_crds
    from capstan.k8s.validate import check_documents, read_manifests

    if _is_source(target):
        docs = _render_source(target, params, image, project)
    else:
        if params or image:
            raise InvalidParameterValue("--param/--image: only a pipeline SOURCE is rendered; a folder of "
                                        "manifests is applied as it is")
        docs = [m.document for m in read_manifests(Path(target))]
        if not docs:
            raise InvalidParameterValue(f"{target}: no *.yaml, *.yml or *.json manifests found")
    bad = [d for d in docs if not isinstance(d, dict)]
    if bad:
        raise InvalidParameterValue(f"{target}: a document is not a mapping (an object)")
    report = check_documents(docs, k8s_version=k8s_version, crds=load_crds(list(crd_dirs)))
    for error in report.errors:
        doc = docs[error.index]
        click.echo(f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}: "
                   f"{error.path + ': ' if error.path else ''}{error.message}", err=True)
    if report.errors:
        raise InvalidParameterValue(f"{len(report.errors)} validation error(s): nothing was applied "
                                    "(`capstan k8s validate` lists them the same way)")
    return sorted(docs, key=_order)


def _with_namespace(doc: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    from capstan.k8s.client import ref_of

    if namespace is None or not ref_of(doc).namespaced:
        return doc
    meta = doc.setdefault("metadata", {})
    given = meta.get("namespace")
    if given and given != namespace:
        raise InvalidParameterValue(f"{doc.get('kind')}/{meta.get('name', '?')}: its namespace {given!r} is not "
                                    f"--namespace {namespace!r}; render it for that namespace or leave out "
                                    "--namespace")
    meta["namespace"] = namespace
    return doc


def register(group: click.Group) -> None:
    """Add ``apply`` to the ``capstan k8s`` group."""

    @group.command("apply")
    @click.argument("target", metavar="DIR|SOURCE")
    @click.option("--context", default=None, help="kubeconfig context (default: the current one, or in-cluster).")
    @click.option("--namespace", "-n", default=None,
                  help="Namespace of namespaced objects that name none (default: the context's).")
    @click.option("--kubeconfig", default=None, type=click.Path(path_type=Path),
                  help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config).")
    @click.option("--force-conflicts", is_flag=True,
                  help="Take over fields another field manager owns (server-side apply's force).")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="A pipeline SOURCE's parameter; repeatable.")
    @click.option("--image", default=None, help="Image of a pipeline SOURCE's steps that name none.")
    @click.option("--project", default="default", show_default=True,
                  help="Project of a pipeline SOURCE (its namespace).")
    @click.option("--crds", "crd_dirs", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="CRD folder custom resources are validated against; repeatable.")
    @click.option("--k8s-version", default=None, help="Kubernetes schema version to validate against.")
    def apply(target: str, context: str | None, namespace: str | None, kubeconfig: Path | None,
              force_conflicts: bool, params: tuple[str, ...], image: str | None, project: str,
              crd_dirs: tuple[Path, ...], k8s_version: str | None) -> None:
        """Validate, then server-side apply (field manager "capstan") every manifest under DIR, or the Jobs of
        pipeline SOURCE (FILE.py[:FUNC]) rendered as `capstan k8s render pipeline` would. Namespaces go
        first. A manifest the API server refuses prints its message and field; the others are still applied
        and the exit status is 1."""
        from capstan.k8s.client import KubeRejected, connect
        from capstan.k8s.validate import DEFAULT_K8S_VERSION

        docs = _documents(target, params, image, project, crd_dirs, k8s_version or DEFAULT_K8S_VERSION)
        docs = [_with_namespace(d, namespace) for d in docs]
        api = connect(context=context, namespace=namespace, kubeconfig=str(kubeconfig) if kubeconfig else None)
        refused = 0
        try:
            for doc in docs:
                meta = doc.get("metadata") or {}
                what = f"{doc.get('kind')}/{meta.get('name', '?')}"
                try:
                    api.apply(doc, force=force_conflicts)
                except KubeRejected as exc:
                    refused += 1
                    hint = " (--force-conflicts takes the fields over)" if exc.status_code == 409 else ""
                    click.echo(f"error: {what}: {exc.message}{hint}", err=True)
                    continue
                where = f" in namespace {meta.get('namespace') or api.namespace}" if meta.get("namespace") or \
                    _order(doc) == 2 else ""
                click.echo(f"{what} applied{where}")
        finally:
            api.close()
        if refused:
            click.echo(f"{refused} of {len(docs)} object(s) refused by the API server", err=True)
            sys.exit(1)
