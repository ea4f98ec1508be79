"""Measuring an upgrade: exact search and Recall@K, the evaluator (old→old, new→old, new→new, flips) and its report.

May import ``core``, ``data``, ``models`` and ``adapters``.
"""
