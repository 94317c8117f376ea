"""Launchers start the ranks, set up the process group and call one worker function.

A worker function is ``job(rank, world_size, cfg) -> result``; nothing it calls knows
which launcher started it.
"""
