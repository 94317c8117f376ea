"""The one exception family users see: a message that names the cause and the fix."""


class SplitnetError(Exception):
    """Bad input or a failed job; the CLI prints the message without a traceback."""
