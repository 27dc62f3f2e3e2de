"""Experiment tracking: records, search-filter parsing, the SDK and its backends."""
