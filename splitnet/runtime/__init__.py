"""The split runtime: a rank's shard of the network, its set-up, its step, and state merge/split."""

from splitnet.runtime.rank import Rank, open_transport, setup_rank, sgd
from splitnet.runtime.shard import ShardNet, build_shard
from splitnet.runtime.state import merge_state, split_state
from splitnet.runtime.step import StepResult, accumulated_step, forward_backward

__all__ = ["Rank", "ShardNet", "StepResult", "accumulated_step", "build_shard", "forward_backward", "merge_state",
           "open_transport", "setup_rank", "sgd", "split_state"]
