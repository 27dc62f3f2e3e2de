"""HTTP server: the Capstan REST API, the MLflow-compatible API, auth and metrics."""
