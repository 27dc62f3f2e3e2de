"""Kubernetes: pure renderers from Capstan's spec records to manifest dicts (`capstan.k8s.render*`), strict
validation of manifests against the official schemas and the CRDs (`capstan.k8s.validate`), and the pure mapping
from Job and Pod status documents to Capstan's reason codes (`capstan.k8s.reasons`)."""
