"""Hyperparameter studies (Katib-style, Optuna underneath): the study spec, the controller that runs trials as queued
workloads with child tracking runs, the trial side (`report`, `should_prune`), the SDK (`capstan.Study`,
`capstan.tune`) and the study store. See ``docs/tuning.md``.

Importing this package is light: Optuna is imported only when a study runs.
"""

from . import tune

__all__ = ["tune"]
