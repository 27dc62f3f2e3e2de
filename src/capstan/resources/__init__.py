"""The neutral resources core: the `Admission` port with its lease and verdict records, what a machine offers
(`Capacity`, GPU detection), Kubernetes-style quantities, and the in-memory `LocalAdmission`.

Pipelines, the workload queue, and next serving and training import this package; it imports none of them.
"""
