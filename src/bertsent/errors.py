"""User-facing errors.

Anything raised as a :class:`BertsentError` is a problem with the user's input or environment, not a
bug: the CLI prints its message on one line and exits with code 2, never a traceback.
"""


class BertsentError(Exception):
    """Base class for errors caused by input the user can fix."""


class DataError(BertsentError):
    """A data source cannot be read or trusted (missing, malformed, unknown labels, ...)."""


class ModelError(BertsentError):
    """A model cannot be found or loaded (bad path, offline hub name, unsafe weights, ...)."""
