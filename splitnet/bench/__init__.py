"""``splitnet bench``: splitnet's strategies against what a user would run otherwise.

Suites: ``throughput`` (training images/s of the one-process reference, PyTorch DDP,
``torch.distributed.pipelining`` and every splitnet strategy on the same network and
batches), ``bytes`` (what each contender moves per step, measured against the plan) and
``data`` (decode + augment rates). Each writes JSON, a markdown table and a PNG.
"""
