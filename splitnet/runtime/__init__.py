"""The split runtime: a rank's shard of the network, its step, and state merge/split."""

from splitnet.runtime.shard import ShardNet, build_shard
from splitnet.runtime.state import merge_state, split_state
from splitnet.runtime.step import StepResult, forward_backward

__all__ = ["ShardNet", "StepResult", "build_shard", "forward_backward", "merge_state", "split_state"]
