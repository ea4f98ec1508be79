"""The upgrade advisor: from texts alone, will adapter queries be backward compatible (``advise``)?

``signals`` measures how faithfully the NEW text space carries the OLD one; ``advice`` turns that into a
predicted Recall@1 change per direction with its error, a verdict and a recommendation, from a line
calibrated on toy worlds with measured answers (``calibration.json``).
"""

from .advice import Advice, DirectionAdvice, advise, read_calibration
from .signals import SIGNALS, text_signals

__all__ = ["SIGNALS", "Advice", "DirectionAdvice", "advise", "read_calibration", "text_signals"]
