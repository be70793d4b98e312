"""Evaluation suites: pure functions over tensors (no I/O, no DB, no HTTP)."""
