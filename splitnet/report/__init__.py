"""``splitnet report``: the runs of a sweep read from their folders, as tables and pictures."""
