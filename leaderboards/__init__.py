"""Leaderboard renderers: Markdown and a static HTML site from a run's results."""

from __future__ import annotations

from .render import render

__all__ = ["render"]
