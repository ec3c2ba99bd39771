"""The loader's exception and warning types."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint or pack that the loader refuses; the message names the file, the keys and the problem."""


class CheckpointWarning(UserWarning):
    """Something the loader accepted but a user should know: a head count assumed, non-finite weights allowed."""
