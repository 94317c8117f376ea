"""Training: the worker loop, checkpoints, schedules, curves."""
