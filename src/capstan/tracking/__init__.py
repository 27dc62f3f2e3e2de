"""The tracking core: records, the `TrackingStore` port, the MLflow search grammar and its limits, JSON value checks.

The store implements these ports; the client layer (`capstan.sdk`) speaks them. Nothing here does I/O or imports
the store, the composition root or the client layer."""
