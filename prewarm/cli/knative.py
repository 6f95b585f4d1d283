"""`prewarm knative inject`: the same as `prewarm inject`, kept under its first name."""

from __future__ import annotations

import argparse

from prewarm.cli import inject


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm knative`'s verbs and their flags."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    inject.add_arguments(
        verbs.add_parser("inject", help="print MANIFEST with the cache volume and wrapper added (= prewarm inject)")
    )
