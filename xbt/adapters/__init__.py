"""Adapters: the contract every method's result honours, its saved config, folders, the Hub, and the one loader.

``Adapter`` (heads and optional LoRA on the new model), ``FusionAdapter`` (SLERP/NLERP with the
old model's query), ``load_adapter`` (a folder or Hub repo, by the saved ``kind``). May import
``core``, ``data``, ``models`` and ``serving``; knows nothing of how an adapter is trained.
"""

from .adapter import Adapter
from .config import AdapterConfig, ModelRef
from .fusion import FusionAdapter
from .registry import ADAPTER_CLASSES, load_adapter, register_adapter

__all__ = [
    "ADAPTER_CLASSES",
    "Adapter",
    "AdapterConfig",
    "FusionAdapter",
    "ModelRef",
    "load_adapter",
    "register_adapter",
]
