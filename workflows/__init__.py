"""Temporal workflows: one class per module, deterministic, no I/O imports."""
