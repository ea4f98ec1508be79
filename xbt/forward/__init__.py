"""Forward compatibility: move the stored OLD gallery vectors into the NEW model's space (``fit_forward``).

``map`` holds ``ForwardMap`` (one head per gallery modality, its id, its files); ``fit`` trains it from
texts and, where given, pairs. Queries then run the bare new model.
"""

from .fit import ForwardConfig, fit_forward
from .map import ForwardMap

__all__ = ["ForwardConfig", "ForwardMap", "fit_forward"]
