"""PNG plots of simulator results (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.queue.simulate import SimResult

PLOT_EXTRA = "plot"
"""The optional-dependency extra that installs matplotlib (``pip install 'capstan[plot]'``)."""


def require_matplotlib() -> None:
    """Fail with one line naming the extra to install when matplotlib is missing (checked before simulating)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InvalidState(f"--plot needs matplotlib, which is not installed: "
                                f"pip install 'capstan[{PLOT_EXTRA}]'")


def write_plots(results: Sequence[SimResult], directory: Path | str) -> list[Path]:
    """Write ``utilization.png``, ``jct_cdf.png``, ``queue_length.png`` and ``measures.png``; returns their paths."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidParameterValue(f"--plot: cannot create {out}: {exc.strerror}") from None
    paths = []
    specs = (("utilization.png", "GPU utilisation over time", "busy GPUs / capacity"),
             ("jct_cdf.png", "Job completion time CDF", "fraction of jobs"),
             ("queue_length.png", "Pending workloads over time", "pending workloads"))
    for name, title, ylabel in specs:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for r in results:
            label = r.policy + (" (oracle)" if r.oracle else "")
            t = [(x - r.series["t"][0]) / 86400 for x in r.series["t"]] if r.series.get("t") else []
            if name == "utilization.png":
                ax.plot(t, [b / r.capacity_gpus if r.capacity_gpus else 0 for b in r.series["busy_gpus"]],
                        label=label, linewidth=0.8)
                ax.set_xlabel("days")
            elif name == "queue_length.png":
                ax.plot(t, r.series["pending"], label=label, linewidth=0.8)
                ax.set_xlabel("days")
            else:
                n = len(r.jcts)
                step = max(1, n // 2000)
                xs = [v / 3600 for v in r.jcts[::step]]
                ax.plot(xs, [(i * step + 1) / n for i in range(len(xs))], label=label)
                ax.set_xscale("log")
                ax.set_xlabel("JCT (hours, log scale)")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths.append(_measures_plot(plt, results, out / "measures.png"))
    return paths


MEASURE_PANELS = (("avg_slowdown", "average bounded slowdown", 1.0),
                  ("p99_wait_s", "p99 wait (hours)", 1 / 3600),
                  ("max_wait_s", "max wait (hours)", 1 / 3600),
                  ("wasted_fraction", "GPU-hours lost to preemption (%)", 100.0))
"""The panels of ``measures.png``: the summary key, the axis title and the factor applied to the value."""


def _measures_plot(plt: Any, results: Sequence[SimResult], path: Path) -> Path:
    """One bar per policy in each of the `MEASURE_PANELS`."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    labels = [r.policy + (" (oracle)" if r.oracle else "") for r in results]
    for ax, (key, title, factor) in zip(axes.flat, MEASURE_PANELS, strict=True):
        values = [float(r.summary()[key]) * factor for r in results]
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
