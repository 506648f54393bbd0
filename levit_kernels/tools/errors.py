"""The one exception every tool raises for a user's mistake.

Its own module so that the tools below the command line (images, distributed, validate,
predict) can raise it without importing cli.py, which imports them.
"""


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""
