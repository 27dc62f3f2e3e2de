"""The shared append-only event log."""
