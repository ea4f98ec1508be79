"""Galleries: a search page's frozen old gallery (``StaticGallery``) and a gallery in migration (``MixedGallery``).

A gallery in migration holds OLD vectors for some items and NEW vectors for the re-embedded ones,
in a vector store (``xbt.vectordb``: FAISS, embedded Qdrant or LanceDB), merged on a calibrated score; ``BackfillJob``
re-embeds in planned order, resumably. May import ``core``, ``data``, ``vectordb``, ``models``, ``adapters`` and
``evaluation``; knows nothing of the toy world or the CLI.
"""

from .backfill import BackfillJob, cutover, open_gallery, read_manifest, rollback
from .calibration import MERGES, ScoreCalibration, merge_scores
from .calibration_fit import calibration_set, fit_calibration, fit_gallery_calibration
from .mixed import GALLERY_FORMAT, ITEM_MODALITIES, MixedGallery
from .pair_vectors import pair_vectors
from .planner import PLANS, DisagreementModel, budget_count, plan_order
from .static import StaticGallery

__all__ = [
    "GALLERY_FORMAT",
    "ITEM_MODALITIES",
    "MERGES",
    "PLANS",
    "BackfillJob",
    "DisagreementModel",
    "MixedGallery",
    "ScoreCalibration",
    "StaticGallery",
    "budget_count",
    "calibration_set",
    "cutover",
    "fit_calibration",
    "fit_gallery_calibration",
    "merge_scores",
    "open_gallery",
    "pair_vectors",
    "plan_order",
    "read_manifest",
    "rollback",
]
