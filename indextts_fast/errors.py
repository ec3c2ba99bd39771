"""The errors the drop-in backend raises where it will not give a different answer than the official code."""

from __future__ import annotations

__all__ = ["UnsupportedModel"]


class UnsupportedModel(ValueError):
    """A target, or a part of it, that the fast backend does not implement (or no longer does, after a change made
    to the model since ``enable``); the message says what differs."""
