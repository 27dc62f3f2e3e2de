"""Queue benchmarks: one admission cycle at scale, and the ITP trace replay of every simulator policy.

    python bench/queue.py                 # both, the trace under both scenarios
    python bench/queue.py --cycle-only    # 100,000 pending workloads / 100 ClusterQueues / 10 cohorts
    python bench/queue.py --trace-only [--scenario normal|high] [--limit N] [--policy NAME ...]
    python bench/queue.py --scenario-pool 1.0   # the pool and quotas that make the trace 100% of capacity

Scenarios: ``normal`` is examples/queues/itp-cluster.yaml (offered load 85%), ``high`` is itp-cluster-high.yaml
(100%). Targets (issue 4): one admission cycle under 100 ms; replaying all 69,351 jobs under 2 minutes for every
policy. Issue 15's goals are printed per scenario as ratios to the FIFO baselines. Wall times on a shared machine
are noisy, so the replay also prints the CPU time of each policy.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "msft-itp-2021-jobs.csv"
SCENARIOS = {"normal": "itp-cluster.yaml", "high": "itp-cluster-high.yaml"}


def cycle_config(cohorts: int = 10, per_cohort: int = 10) -> str:
    lines = ["flavors: [{name: cpu}, {name: a100}, {name: h100}]", "cohorts:"]
    lines += [f"  - {{name: c{c}}}" for c in range(cohorts)]
    lines.append("clusterQueues:")
    for c in range(cohorts):
        for q in range(per_cohort):
            preempt = "preemption: {withinClusterQueue: LowerPriority, reclaimWithinCohort: Any}" if q % 2 else ""
            lines.append(f"""  - name: q{c}-{q}
    cohort: c{c}
    queueingStrategy: {'StrictFIFO' if q % 5 == 0 else 'BestEffortFIFO'}
    {preempt}
    resourceGroups:
      - coveredResources: [cpu, memory]
        flavors: [{{name: cpu, resources: [{{name: cpu, nominalQuota: 64}}, {{name: memory, nominalQuota: 512Gi}}]}}]
      - coveredResources: [gpu]
        flavors:
          - {{name: a100, resources: [{{name: gpu, nominalQuota: 8}}]}}
          - {{name: h100, resources: [{{name: gpu, nominalQuota: 4}}]}}""")
    lines.append("localQueues:")
    lines += [f"  - {{name: q{c}-{q}, clusterQueue: q{c}-{q}}}" for c in range(cohorts) for q in range(per_cohort)]
    return "\n".join(lines) + "\n"


def bench_cycle(pending_total: int = 100_000, repeats: int = 7) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "src"))
    import capstan.queue.engine as _engine
    from capstan.queue.config import load_yaml, parse_config
    from capstan.queue.model import Admission, PodSet, Workload
    from capstan.queue.pending import PendingQueues
    from capstan.queue.state import ClusterState, Topology
    from capstan.resources.quantity import parse_quantity

    rng = random.Random(7)
    cfg = parse_config(load_yaml(cycle_config()))
    names = [cq.name for cq in cfg.cluster_queues]
    shapes = [(n, g, c) for n in (1, 2, 4) for g in (0, 1, 2, 4, 8) for c in ("1", "4", "16")]

    def workload(i: int, cq: str) -> Workload:
        n, g, c = rng.choice(shapes)
        requests = {"cpu": parse_quantity(c), "memory": parse_quantity(f"{int(c) * 4}Gi")}
        if g:
            requests["gpu"] = g * 1000
        return Workload(f"w{i}", cq, cq, (PodSet("main", n, requests),), rng.choice((0, 0, 100, 1000)),
                        float(i))

    state = ClusterState(Topology(cfg))
    # Fill most quota so that the cycle has to look at, reject and preempt, not just admit.
    k = 0
    for cq in names:
        for _ in range(6):
            k += 1
            w = Workload(f"run{k}", cq, cq, (PodSet("main", 1, {"cpu": 8000, "memory": 32 * 2**30 * 1000,
                                                               "gpu": 2000}),), 0, -1.0)
            flavor = "a100" if _ < 4 else "h100"
            usage = {("cpu", "cpu"): 8000, ("cpu", "memory"): 32 * 2**30 * 1000, (flavor, "gpu"): 2000}
            state.admit(Admission(w, cq, (), usage, 0.0))
    pending = PendingQueues()
    for i in range(pending_total):
        pending.push(workload(i, names[i % len(names)]))
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = _engine.schedule(state, pending, 0.0, explain=False)
        times.append((time.perf_counter() - t0) * 1000)
    assert result is not None
    return {"pending": pending_total, "cluster_queues": len(names), "median_ms": statistics.median(times),
            "min_ms": min(times), "max_ms": max(times), "admitted": len(result.admitted),
            "preempted": len(result.preempted)}


def scenario_pool(fraction: float) -> dict[str, object]:
    """The pool and nominal quotas that make the whole ITP trace ``fraction`` of capacity."""
    sys.path.insert(0, str(ROOT / "src"))
    from capstan.queue.sim_measures import offered_load, pool_for_load, proportional_quotas
    from capstan.queue.trace import read_trace

    jobs = read_trace(TRACE)
    load = offered_load((j.submit, j.duration, j.gpus) for j in jobs)
    gpu_hours: dict[str, float] = {}
    floors: dict[str, int] = {}
    for j in jobs:
        gpu_hours[j.queue] = gpu_hours.get(j.queue, 0.0) + j.duration * j.gpus / 3600
        floors[j.queue] = max(floors.get(j.queue, 0), j.gpus)
    pool = pool_for_load(load, fraction)
    return {"gpu_hours": load.gpu_hours, "span_hours": load.span_hours, "mean_gpus": load.mean_gpus,
            "load": fraction, "pool_gpus": pool, "offered_load_of_pool": load.mean_gpus / pool,
            "quotas": proportional_quotas(gpu_hours, floors, pool), "floors": floors}


def bench_trace(limit: int | None, policies: list[str] | None = None,
                scenario: str = "normal") -> list[dict[str, object]]:
    sys.path.insert(0, str(ROOT / "src"))
    from capstan.queue.config import load_config, load_yaml
    from capstan.queue.simulate import POLICIES, replay, sim_settings
    from capstan.queue.trace import read_trace

    cluster = ROOT / "examples" / "queues" / SCENARIOS[scenario]
    config = load_config(cluster)
    settings = sim_settings(load_yaml(cluster.read_text()).get("simulation"))
    jobs = read_trace(TRACE, limit=limit)
    out = []
    for name, policy in POLICIES.items():
        if policies and name not in policies:
            continue
        cpu = time.process_time()
        r = replay(config, jobs, policy, settings)
        row = r.summary()
        row["cpu_s"] = time.process_time() - cpu
        out.append(row)
        print(f"  {scenario}: {name:20s} done in {r.wall_s:.1f}s (CPU {row['cpu_s']:.1f}s)", flush=True)
    return out


GOAL_COLUMNS = (("wait/BE", "avg_wait_s", "best-effort-fifo", "<= 0.5"),
                ("JCT/SF", "avg_jct_s", "strict-fifo", "<= 0.5"),
                ("JCT/BE", "avg_jct_s", "best-effort-fifo", "<= 1"),
                ("p99JCT/BE", "p99_jct_s", "best-effort-fifo", "<= 1.1"),
                ("maxwait/BE", "max_wait_s", "best-effort-fifo", "<= 1"))
"""Issue 15's goals as ratios: (column, measure, baseline policy, target)."""


def print_goals(rows: list[dict[str, object]]) -> None:
    """Each policy's figures on issue 15's goal measures, as ratios to the FIFO baselines where the goal is one."""
    base = {str(r["policy"]): r for r in rows}

    def value(row: dict[str, object], key: str) -> float:
        return float(str(row[key]))

    head = ["policy", *(c for c, *_ in GOAL_COLUMNS), "wasted%", "Jain", "util", "util-BE", "slowdown", "wall_s"]
    print(" ".join(f"{h:>19s}" if i == 0 else f"{h:>10s}" for i, h in enumerate(head)))
    for r in rows:
        cells = [str(r["policy"]) + (" (oracle)" if r["oracle"] else "")]
        for _col, key, ref, _target in GOAL_COLUMNS:
            den = value(base[ref], key) if ref in base else 0.0
            cells.append(f"{value(r, key) / den:.3f}" if den else "-")
        util_be = value(r, "gpu_utilization") - value(base["best-effort-fifo"], "gpu_utilization") \
            if "best-effort-fifo" in base else float("nan")
        cells += [f"{100 * value(r, 'wasted_fraction'):.3f}", f"{value(r, 'jain_fairness'):.3f}",
                  f"{value(r, 'gpu_utilization'):.4f}", f"{util_be:+.4f}", f"{value(r, 'avg_slowdown'):.3f}",
                  f"{value(r, 'wall_s'):.1f}"]
        print(" ".join(f"{c:>19s}" if i == 0 else f"{c:>10s}" for i, c in enumerate(cells)))
    print("targets: " + ", ".join(f"{c} {t}" for c, _k, _r, t in GOAL_COLUMNS)
          + ", wasted% <= 1, Jain >= 0.9, util-BE >= -0.01, wall_s < 120")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycle-only", action="store_true")
    parser.add_argument("--trace-only", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N jobs")
    parser.add_argument("--policy", action="append", default=None, help="replay only this policy (repeatable)")
    parser.add_argument("--repeats", type=int, default=7, help="admission cycles to time")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both",
                        help="cluster file for the trace replay: normal (85%%), high (100%%) or both")
    parser.add_argument("--scenario-pool", type=float, default=None, metavar="LOAD",
                        help="print the pool and quotas that make the trace LOAD of capacity (1.0 = 100%%) and exit")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="also write the replay rows of every scenario to this JSON file")
    args = parser.parse_args()
    if args.scenario_pool is not None:
        print(json.dumps(scenario_pool(args.scenario_pool), indent=2))
        return
    if not args.trace_only:
        c = bench_cycle(repeats=args.repeats)
        print(f"admission cycle: {c['pending']:,} pending, {c['cluster_queues']} ClusterQueues in 10 cohorts: "
              f"median {c['median_ms']:.1f} ms (min {c['min_ms']:.1f}, max {c['max_ms']:.1f}); "
              f"admitted {c['admitted']}, preempted {c['preempted']}  [target < 100 ms]")
    if args.cycle_only:
        return
    scenarios = list(SCENARIOS) if args.scenario == "both" else [args.scenario]
    every: dict[str, list[dict[str, object]]] = {}
    for scenario in scenarios:
        t0 = time.perf_counter()
        rows = bench_trace(args.limit, args.policy, scenario)
        every[scenario] = rows
        total = time.perf_counter() - t0
        print(f"\n{scenario} scenario ({SCENARIOS[scenario]}): trace replay ({rows[0]['jobs']:,} jobs, "
              f"{len(rows)} policies): {total:.1f} s  [target < 120 s per policy]")
        head = ("policy", "oracle", "avg_jct_s", "p99_jct_s", "avg_wait_s", "p99_wait_s", "max_wait_s",
                "avg_slowdown", "gpu_utilization", "jain_fairness", "preemptions", "wasted_fraction", "wall_s",
                "cpu_s")
        print(" ".join(f"{h:>15s}" for h in head))
        for r in rows:
            print(" ".join(f"{r[h]:>15.3f}" if isinstance(r[h], float) else f"{r[h]!s:>15s}" for h in head))
        print()
        print_goals(rows)
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(every, indent=1))


if __name__ == "__main__":
    main()
