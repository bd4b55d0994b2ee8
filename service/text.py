"""Text shortened for people: table cells in the CLI and the dashboard."""

from __future__ import annotations


def excerpt(text: str, length: int = 60) -> str:
    """`text` on one line, cut to `length` characters with an ellipsis when longer."""
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "\u2026"
