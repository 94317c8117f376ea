"""``splitnet profile``: what each rank really holds and where its step time goes, beside the plan.

worker.py runs a few training steps per rank under the allocator's trace and times its
exchanges' waits; account.py turns the trace into the exact peak of live tensor bytes and
what held it; run.py launches the ranks, splits their step time with the exchange clock
(comm/clock.py) and sets it all beside the plan; picture.py draws it.
"""

from splitnet.profile.run import profile_table, run_profile

__all__ = ["profile_table", "run_profile"]
