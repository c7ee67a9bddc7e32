"""CLI verbs (being written)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's verbs (none yet)."""
