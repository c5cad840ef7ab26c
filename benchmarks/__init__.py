"""Benchmarks (see issue 5)."""
