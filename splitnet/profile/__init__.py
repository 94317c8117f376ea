"""``splitnet profile``: what each rank really holds and where its step time goes, beside the plan.

worker.py runs a few training steps per rank under the allocator's trace; account.py
turns the trace into the exact peak of live tensor bytes and what held it; waits.py
splits the step time; report.py sets it all beside the plan; picture.py draws it.
"""

from splitnet.profile.run import profile_table, run_profile

__all__ = ["profile_table", "run_profile"]
