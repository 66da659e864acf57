"""Benchmarks: they print figures and write JSON; they are not pass/fail tests."""
