"""Serving many requests: ``pipeline.Pipeline`` (many syntheses at once on an enabled IndexTTS2 object: each
segment's GPT generations decoded together, the waves made in one vocoder call)."""

from .pipeline import Job, Pipeline, Result, Voice

__all__ = ["Pipeline", "Job", "Voice", "Result"]
