"""The networks: CLIP encoders (open_clip and transformers), LoRA on a tower, the projection head, batched cached
embedding.

May import ``core`` and ``data``.
"""
