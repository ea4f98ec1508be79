"""Data in: caption streams, image-caption pairs, retrieval datasets and the benchmark file readers (Karpathy,
NoCaps, webdataset).

No model code. May import ``core`` only.
"""
