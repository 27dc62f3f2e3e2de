"""Queue benchmarks: one admission cycle at scale, and the ITP trace replay of every simulator policy.

    python bench/queue.py                 # both
    python bench/queue.py --cycle-only    # 100,000 pending workloads / 100 ClusterQueues / 10 cohorts
    python bench/queue.py --trace-only [--limit N] [--policy NAME ...]

Targets (issue 4): one admission cycle under 100 ms; replaying all 69,351 jobs under 2 minutes for every policy.
Wall times on a shared machine are noisy, so the replay also prints the CPU time of each policy.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "msft-itp-2021-jobs.csv"


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
    from capstan.resources.quantity import parse_quantity
    from capstan.queue.state import ClusterState, Topology

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


def bench_trace(limit: int | None, policies: list[str] | None = None) -> list[dict[str, object]]:
    sys.path.insert(0, str(ROOT / "src"))
    from capstan.queue.config import load_config, load_yaml
    from capstan.queue.simulate import POLICIES, replay, sim_settings
    from capstan.queue.trace import read_trace

    cluster = ROOT / "examples" / "queues" / "itp-cluster.yaml"
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
        print(f"  {name:20s} done in {r.wall_s:.1f}s (CPU {row['cpu_s']:.1f}s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycle-only", action="store_true")
    parser.add_argument("--trace-only", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N jobs")
    parser.add_argument("--policy", action="append", default=None, help="replay only this policy (repeatable)")
    parser.add_argument("--repeats", type=int, default=7, help="admission cycles to time")
    args = parser.parse_args()
    if not args.trace_only:
        c = bench_cycle(repeats=args.repeats)
        print(f"admission cycle: {c['pending']:,} pending, {c['cluster_queues']} ClusterQueues in 10 cohorts: "
              f"median {c['median_ms']:.1f} ms (min {c['min_ms']:.1f}, max {c['max_ms']:.1f}); "
              f"admitted {c['admitted']}, preempted {c['preempted']}  [target < 100 ms]")
    if not args.cycle_only:
        t0 = time.perf_counter()
        rows = bench_trace(args.limit, args.policy)
        total = time.perf_counter() - t0
        print(f"\ntrace replay ({rows[0]['jobs']:,} jobs, {len(rows)} policies): {total:.1f} s  "
              "[target < 120 s per policy]")
        head = ("policy", "oracle", "avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_wait_s", "gpu_utilization",
                "jain_fairness", "preemptions", "wasted_gpu_hours", "wall_s", "cpu_s")
        print(" ".join(f"{h:>16s}" for h in head))
        for r in rows:
            print(" ".join(f"{r[h]:>16.3f}" if isinstance(r[h], float) else f"{r[h]!s:>16s}" for h in head))
        base = {r["policy"]: r for r in rows}
        for ref in ("strict-fifo", "best-effort-fifo"):
            if ref not in base:
                continue
            ref_jct = float(str(base[ref]["avg_jct_s"]))
            ratios = ", ".join(f"{r['policy']} {float(str(r['avg_jct_s'])) / ref_jct:.3f}x"
                               for r in rows if r["policy"] != ref)
            print(f"avg JCT vs {ref}: {ratios}")


if __name__ == "__main__":
    main()
