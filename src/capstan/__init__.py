"""Capstan."""
