"""Argument types and flag groups shared by the long-running commands (`serve`, `scaler`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from prewarm.core import targets
from prewarm.replay import tuned_runs
from scaler import __main__ as scaler_main


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def positive_seconds(text: str) -> float:
    """A number of seconds > 0 for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def count(text: str) -> int:
    """An integer >= 0 for argparse."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return int(text)


def read_tokens(token_file: Path | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """Bearer tokens from a file (one a line, # comments) and/or PREWARM_TOKENS (comma-separated)."""
    tokens: list[str] = [t.strip() for t in env.get("PREWARM_TOKENS", "").split(",") if t.strip()]
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            problem = targets.Problem("--token-file", str(token_file), f"cannot be read: {e.strerror}")
            raise targets.ConfigError(str(token_file), [problem]) from e
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tuple(tokens)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS for the gRPC server, matching KEDA's caCert / tlsClientCert / tlsClientKey trigger options."""
    parser.add_argument("--grpc-cert", type=Path, help="server certificate (PEM); enables TLS")
    parser.add_argument("--grpc-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--grpc-client-ca", type=Path, help="CA that signs client certificates; enables mTLS")


def scaler_options(args: argparse.Namespace) -> scaler_main.ScalerOptions:
    """The gRPC options shared by `serve --grpc` and `scaler`."""
    host, port = args.grpc
    return scaler_main.ScalerOptions(
        address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        tls_cert=args.grpc_cert,
        tls_key=args.grpc_key,
        tls_client_ca=args.grpc_client_ca,
    )


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """What the tuner assumes of history that records only arrivals per minute (`serve`, `tune`)."""
    defaults = tuned_runs.HistoryOptions()
    parser.add_argument(
        "--tune-days",
        type=float,
        default=defaults.tune_days,
        help=f"days of history each target is tuned on (default {defaults.tune_days:g})",
    )
    parser.add_argument(
        "--tune-cold-start",
        default=f"{defaults.cold_start_seconds:g}s",
        help=f"the model servers' cold start, for tuning (default {defaults.cold_start_seconds:g}s)",
    )
    parser.add_argument(
        "--tune-request-time",
        default=f"{defaults.request_seconds:g}s",
        help=f"how long a request runs, for tuning on per-minute history (default {defaults.request_seconds:g}s)",
    )


def history_options(args: argparse.Namespace) -> tuned_runs.HistoryOptions:
    """The tuning flags as HistoryOptions; ValueError naming every bad flag and value."""
    problems = []
    seconds: dict[str, float] = {}
    for flag, text in (("--tune-cold-start", args.tune_cold_start), ("--tune-request-time", args.tune_request_time)):
        try:
            seconds[flag] = targets.parse_duration(text).total_seconds()
        except ValueError as e:
            problems.append(f"{flag}: {text!r} {e}")
            continue
        if seconds[flag] <= 0:
            problems.append(f"{flag}: {text!r} must be > 0")
    if not 0 < args.tune_days <= targets.MAX_HISTORY_DAYS:
        problems.append(f"--tune-days: {args.tune_days} must be > 0 and <= {targets.MAX_HISTORY_DAYS}")
    if problems:
        raise ValueError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    return tuned_runs.HistoryOptions(
        tune_days=args.tune_days,
        cold_start_seconds=seconds["--tune-cold-start"],
        request_seconds=seconds["--tune-request-time"],
    )


def parse_objective(text: str) -> float:
    """`cold=5%` -> 0.05; ValueError with a message about the value."""
    key, sep, value = text.partition("=")
    if key.strip() != "cold" or not sep:
        raise ValueError("is not cold=SHARE (e.g. cold=5%)")
    return targets.parse_share(value)
