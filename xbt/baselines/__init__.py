"""The training-free methods: closed-form maps new → old (Procrustes, ridge) and SLERP/NLERP fusion with its weight
chosen on pairs.

May import ``core``, ``data``, ``models``, ``adapters`` and ``evaluation``.
"""
