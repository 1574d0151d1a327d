"""Leaderboard renderers: Markdown and a static HTML site from a run's results."""

from __future__ import annotations

from .renderer import render

__all__ = ["render"]
