"""Data errors: bad configuration, missing shards, and samples that cannot be read."""

from splitnet.errors import SplitnetError


class DataError(SplitnetError):
    """A data set or data configuration problem, caught before training starts."""


class BadSampleError(DataError):
    """A sample that cannot be decoded, under ``on_error: raise``; names its shard and key."""
