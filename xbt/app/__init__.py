"""The search page: an old gallery searched old→old, new→old and new→new side by side (``SearchEngine``, ``launch``).

The page is Gradio (``pip install 'xbt[app]'``). May import every package below the CLI.
"""

from .engine import SearchEngine
from .page import build_app, launch, toy_adapters, toy_setup

__all__ = ["SearchEngine", "build_app", "launch", "toy_adapters", "toy_setup"]
