"""The `--prometheus` flags `serve` and `forecast explain` share: where request history is read."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from prewarm.core import targets
from prewarm.forecast import request_history
from prewarm.service import history


def add_prometheus_arguments(parser: argparse.ArgumentParser) -> None:
    """Prometheus for `forecast.history` targets; each flag falls back to its PREWARM_PROMETHEUS_* variable."""
    parser.add_argument(
        "--prometheus", metavar="URL", help="Prometheus base URL for forecast.history (env PREWARM_PROMETHEUS_URL)"
    )
    parser.add_argument(
        "--prometheus-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token for Prometheus, read from FILE (env PREWARM_PROMETHEUS_TOKEN holds the token itself)",
    )
    parser.add_argument(
        "--prometheus-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle for an https Prometheus (env PREWARM_PROMETHEUS_CA)",
    )
    parser.add_argument(
        "--prometheus-coverage",
        metavar="SELECTOR",
        help="series whose samples mark the minutes Prometheus recorded (default up; env PREWARM_PROMETHEUS_COVERAGE)",
    )


def prometheus_settings(args: argparse.Namespace, env: Mapping[str, str]) -> history.PrometheusSettings | None:
    """The Prometheus settings from flags and environment, or None when no URL is given.

    Raises ConfigError naming every bad flag or variable.
    """
    url = args.prometheus or env.get("PREWARM_PROMETHEUS_URL") or None
    problems: list[targets.Problem] = []
    token = env.get("PREWARM_PROMETHEUS_TOKEN") or None
    if args.prometheus_token_file is not None:
        try:
            token = args.prometheus_token_file.read_text(encoding="utf-8").strip() or None
        except OSError as e:
            problems.append(
                targets.Problem(
                    "--prometheus-token-file", str(args.prometheus_token_file), f"cannot be read: {e.strerror}"
                )
            )
    ca_text = str(args.prometheus_ca) if args.prometheus_ca is not None else env.get("PREWARM_PROMETHEUS_CA")
    ca = Path(ca_text) if ca_text else None
    if ca is not None and not ca.is_file():
        problems.append(targets.Problem("--prometheus-ca", str(ca), "is not a file"))
    coverage = args.prometheus_coverage or env.get("PREWARM_PROMETHEUS_COVERAGE") or request_history.DEFAULT_COVERAGE
    if not coverage.strip() or "[" in coverage:
        problems.append(
            targets.Problem("--prometheus-coverage", coverage, 'is not a series selector such as up{job="x"}')
        )
    if url is not None and not url.startswith(("http://", "https://")):
        problems.append(targets.Problem("--prometheus", url, "is not an http:// or https:// URL"))
    if problems:
        raise targets.ConfigError("the Prometheus settings", problems)
    if url is None:
        return None
    return history.PrometheusSettings(url=url, token=token, ca_file=ca, coverage=coverage.strip())
