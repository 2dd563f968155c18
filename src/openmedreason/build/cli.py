"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`.

Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
