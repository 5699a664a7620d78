"""Every registry filled (``common.registry``): importing this imports the module that owns each kind. Entry points
import it, so a config is checked against every registered name as it loads; so do the README's config table
(``mdm.config_docs``) and the tests."""

from .pretrain.objectives import OBJECTIVES
from .pretrain.pools import POOLS
from .segment.datasets import SOURCES
from .segment.finetune import NETWORKS
from .study.methods import METHODS

ALL = (OBJECTIVES, POOLS, SOURCES, NETWORKS, METHODS)

__all__ = ["ALL", "METHODS", "NETWORKS", "OBJECTIVES", "POOLS", "SOURCES"]
