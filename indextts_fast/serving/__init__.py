"""Serving many requests: ``pipeline.Pipeline`` (many syntheses at once on an enabled IndexTTS2 object: each
segment's GPT generations decoded together, the waves made in one vocoder call), ``engine.Engine`` (the thread that
forms the batches), ``server`` (the OpenAI-compatible HTTP API: ``python -m indextts_fast serve``) and ``ray_app``
(the same server as a Ray Serve deployment: ``serve run indextts_fast.serving:app`` / ``:build_app``; ray is
imported only when ``app`` or ``build_app`` is read)."""

from .pipeline import Job, Pipeline, Result, Voice

__all__ = ["Pipeline", "Job", "Voice", "Result", "app", "build_app"]


def __getattr__(name):
    if name == "build_app":
        from .ray_app import build_app

        return build_app
    if name == "app":
        from .ray_app import app_from_env

        return app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
