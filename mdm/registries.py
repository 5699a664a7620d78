"""Every registry filled (``common.registry``): importing this imports the module that owns each
kind. Entry points import it, so a config is checked against every registered name as it loads; so
do the README's config table (``mdm.config_docs``) and the tests."""

from .classify.datasets import CLASS_SOURCES
from .classify.finetune import CLASS_NETWORKS
from .classify.heads import HEADS
from .classify.task import CLASSIFICATION
from .pretrain.losses import LOSSES
from .pretrain.objectives import OBJECTIVES
from .pretrain.pools import POOLS
from .pretrain.shards import ShardPool
from .pretrain.slides import SlideDataset
from .segment.datasets import SOURCES
from .segment.finetune import NETWORKS
from .segment.pixel_heads import PIXEL_HEADS
from .segment.task import SEGMENTATION
from .stage2.tasks import TASKS
from .study.methods import CLASS_METHODS, METHODS
from .study.windows import window_split

ALL = (OBJECTIVES, LOSSES, POOLS, TASKS, SOURCES, PIXEL_HEADS, NETWORKS, METHODS, CLASS_SOURCES,
       HEADS, CLASS_NETWORKS, CLASS_METHODS)
TASK_RECORDS = (SEGMENTATION, CLASSIFICATION)

__all__ = ["ALL", "CLASS_METHODS", "CLASS_NETWORKS", "CLASS_SOURCES", "HEADS", "LOSSES", "METHODS",
           "NETWORKS", "OBJECTIVES", "PIXEL_HEADS", "POOLS", "SOURCES", "ShardPool", "SlideDataset",
           "TASKS", "TASK_RECORDS", "window_split"]
