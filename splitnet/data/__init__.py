"""Data: webdataset shards, the paper's augmentations, an embedded real dataset.

``build_loader`` gives one data-parallel replica its batches for one epoch; every rank
of a model-parallel group calls it with the same arguments and gets the same batches, or
with its ``part`` and gets its rows of them, which the ranks then all-gather.
``data_info`` says what a ``data`` config holds (classes, counts, colour statistics).
"""

from splitnet.data.config import DataConfig
from splitnet.data.errors import BadSampleError, DataError
from splitnet.data.info import DataInfo, data_info
from splitnet.data.pipeline import ShardLoader, build_loader
from splitnet.data.synthetic import SyntheticLoader

__all__ = [
    "BadSampleError",
    "DataConfig",
    "DataError",
    "DataInfo",
    "ShardLoader",
    "SyntheticLoader",
    "build_loader",
    "data_info",
]
