"""Serving without torch: ONNX export of an adapter's query encoders and the runtime copied beside them.

May import ``core`` and ``models``; ``runtime`` imports nothing from xbt at all.
"""
