"""XBT itself: stage 1 (text-only projection), stage 2 (LoRA image path and distilled text head, held-out guard),
``fit``.

May import every package below ``gallery``; knows nothing of galleries, the toy world or the CLI.
"""
