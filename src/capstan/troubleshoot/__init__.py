"""Troubleshooting: one timeline per workload and the cause of its state (`capstan describe`, ``/api/v1/timeline``).

- `classify` (pure): names the cause from recorded facts (`Facts` -> `Diagnosis`);
- `timeline` (pure): the `Timeline` record and its items, peaks and related workloads;
- `sources`, `reads_pipelines`, `reads_jobs`, `reads_other`: one read model per kind, through the ports of
  `capstan.services.Services.timelines`;
- `reader`: ``KIND/ID`` names and the `TimelineReader`.

See ``docs/troubleshooting.md``.
"""
