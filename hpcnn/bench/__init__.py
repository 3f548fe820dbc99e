"""Benchmarks: ``python -m hpcnn.bench {train,...}``. Speed is measured here, never in tests."""
