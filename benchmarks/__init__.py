"""Benchmarks: pgqueue's peers measured side by side (see benchmarks/README.md)."""
