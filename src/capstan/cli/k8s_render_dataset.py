"""``capstan k8s render dataset NAME --size 100Gi -o DIR``: a dataset's PersistentVolumeClaim
(`capstan.k8s.render_datasets`, docs/kubernetes-pipelines.md). Steps and jobs mount it with ``--dataset``."""

from __future__ import annotations

from pathlib import Path

import click


def register(group: click.Group) -> None:
    """Add ``dataset`` to the ``capstan k8s render`` group (which `capstan.cli.k8s_render` creates)."""
    render = group.commands["render"]
    if not isinstance(render, click.Group):
        raise TypeError("capstan k8s render must be a group")  # a wiring mistake, not user input

    @render.command("dataset")
    @click.argument("name")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifest to (created when missing).")
    @click.option("--size", required=True, help="Storage to request, e.g. 100Gi.")
    @click.option("--access", type=click.Choice(["read-write-many", "read-only-many", "read-write-once"]),
                  default="read-write-many", show_default=True,
                  help="ReadWriteMany (outputs, or data loaded once and read by many), ReadOnlyMany (shared "
                       "read-only input; needs --from-snapshot, --from-claim or --volume) or ReadWriteOnce.")
    @click.option("--storage-class", default=None, help="StorageClass (default: the cluster's default class).")
    @click.option("--project", default="default", show_default=True, help="Project, i.e. the claim's namespace.")
    @click.option("--from-snapshot", default=None, metavar="SNAPSHOT", help="Fill the volume from a VolumeSnapshot.")
    @click.option("--from-claim", default=None, metavar="CLAIM", help="Fill the volume by cloning another claim.")
    @click.option("--volume", default=None, metavar="PV", help="Bind to this existing PersistentVolume.")
    def dataset(name: str, out: Path, size: str, access: str, storage_class: str | None, project: str,
                from_snapshot: str | None, from_claim: str | None, volume: str | None) -> None:
        """Render dataset NAME as a PersistentVolumeClaim of --size. Mount it in pipeline steps with
        `capstan k8s render pipeline ... --dataset NAME:/data/NAME[:rw]`."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.render_datasets import Dataset, render_dataset
        from capstan.resources.quantity import MILLI, parse_quantity

        record = Dataset(name=name, size_bytes=parse_quantity(size, path="--size") // MILLI,
                         access="read-only-many" if access == "read-only-many"
                         else "read-write-once" if access == "read-write-once" else "read-write-many",
                         project=project, storage_class=storage_class, from_snapshot=from_snapshot,
                         from_claim=from_claim, volume=volume)
        written = write_manifests([render_dataset(record)], out)
        click.echo(f"wrote {written[0]}")
