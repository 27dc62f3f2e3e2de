"""The workload queue: Kueue-style quotas, cohorts, priorities, preemption, fair sharing, gang admission and
fractional GPUs, with "why is it pending", usage showback and a trace-driven simulator.

The admission engine (`capstan.queue.engine.schedule`) is pure; `capstan.queue.manager.QueueManager` keeps the
state and persists it behind a small port. Heavy modules (SQL, Prometheus, plotting) are imported lazily.
"""
