"""The one exception type for mistakes a user can fix.

The CLI prints a StablekitError as a single line (what was wrong, with the offending value, and
what to do) and exits with status 2; every other exception is a bug and keeps its traceback.
"""


class StablekitError(Exception):
    """A user-facing error: bad input, unknown name, unreadable file. One line, says the fix."""
