"""Exceptions that the command-line tools turn into one clear line and exit status 2."""


class HpcnnError(Exception):
    """Base class for errors caused by the user's input (bad option, missing or corrupt file).

    The command-line entry points catch it, print ``error: <message>`` on stderr and exit with 2.
    """


class UsageError(HpcnnError):
    """A bad command-line option or configuration value."""


class DataError(HpcnnError):
    """A dataset file is missing, truncated, corrupt or fails its checksum. The message names it."""
