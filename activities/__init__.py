"""Activity classes, grouped by what they depend on; built once in the worker."""
