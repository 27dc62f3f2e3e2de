"""Distributed training jobs: the spec record, rank environments, the job store port, the gang launcher and runner,
and checkpoints. See ``docs/training.md``."""
