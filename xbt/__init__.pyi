# What type checkers and IDEs see of the package root: the names xbt/__init__.py loads on first use.
from . import compat as compat
from . import toy as toy
from .adapters.adapter import Adapter as Adapter
from .adapters.config import AdapterConfig as AdapterConfig
from .adapters.config import ModelRef as ModelRef
from .adapters.fusion import FusionAdapter as FusionAdapter
from .adapters.registry import load_adapter as load_adapter
from .advisor.advice import Advice as Advice
from .advisor.advice import advise as advise
from .baselines.config import BaselineConfig as BaselineConfig
from .baselines.fit import fuse as fuse
from .core.errors import XBTError as XBTError
from .data.retrieval import RetrievalDataset as RetrievalDataset
from .data.retrieval import load_dataset as load_dataset
from .evaluation.evaluate import evaluate as evaluate
from .evaluation.report import Report as Report
from .forward.fit import fit_forward as fit_forward
from .forward.map import ForwardMap as ForwardMap
from .method.config import Stage1Config as Stage1Config
from .method.config import Stage2Config as Stage2Config
from .method.fit import fit as fit
from .models.encoders import CLIPEncoder as CLIPEncoder
from .models.encoders import load_clip as load_clip
from .version import __version__ as __version__

__all__: list[str]
