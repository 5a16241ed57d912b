"""The one wording of a time left (``about 6 min left``), shared by the app, the CLI and the job queue."""

from __future__ import annotations


def left_text(seconds: float | None) -> str:
    """``about 40 s left`` below 90 s, ``about 6 min left`` below 90 min, else ``about 2 h 5 min left``.

    ``None`` (no speed measured yet) gives ``measuring the speed…``.
    """
    if seconds is None:
        return "measuring the speed…"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60} min left"


def duration_text(seconds: float) -> str:
    """``about 40 s`` / ``about 6 min`` (the same rounding as :func:`left_text`)."""
    return left_text(seconds).removesuffix(" left")
