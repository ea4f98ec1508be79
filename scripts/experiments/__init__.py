"""Sweeps and probes: how the defaults were chosen and what was tried (docs/benchmarks-log.md has the figures)."""
