"""Model registry records and logic."""
