"""The error every strategy raises when a spec and a mesh cannot make a plan."""

from splitnet.errors import SplitnetError


class PartitionError(SplitnetError, ValueError):
    """A spec, mesh or partition setting no plan can satisfy; the message names the fix."""
