"""The base of every failure whose message already names the cause and the fix."""


class UserError(Exception):
    """Reported to the user as one line and a non-zero exit, without a traceback."""
