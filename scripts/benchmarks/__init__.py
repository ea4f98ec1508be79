"""The benchmarks: each prints its figures and writes JSON (and a plot) that BENCHMARKS.md quotes with its command."""
