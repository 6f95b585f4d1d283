"""`prewarm history export --trace FILE --format F --out FILE.om`: a trace's per-target request counts as
OpenMetrics under a preset's metric and label names, for `promtool tsdb create-blocks-from openmetrics`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prewarm.core import targets
from prewarm.replay import history_export, traces

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm history`'s verbs and their flags."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="write a trace's request counts as OpenMetrics for promtool")
    export.add_argument("--trace", type=Path, required=True, help="trace file")
    export.add_argument("--format", choices=[f.value for f in traces.TraceFormat], required=True)
    export.add_argument("--out", type=Path, required=True, help="OpenMetrics file to write (FILE.om)")
    export.add_argument(
        "--preset",
        choices=[p.value for p in targets.HistoryPreset if p is not targets.HistoryPreset.PROMQL],
        default=targets.HistoryPreset.KNATIVE.value,
        help="whose metric and label names to write under (default knative)",
    )
    export.add_argument("--namespace", default="replay", help="the namespace label of every target (default replay)")
    export.add_argument(
        "--shift-days",
        type=int,
        default=0,
        help="move every request by this many whole days (time of day kept), e.g. to put today inside the trace",
    )
    export.add_argument("--seed", type=int, default=0, help="places azure-functions arrivals inside their minutes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the file and say how to load it; 2 when the trace cannot be read."""
    try:
        trace = traces.read_trace(args.trace, traces.TraceFormat(args.format), seed=args.seed)
    except traces.TraceError as e:
        print(f"prewarm history export: {e}", file=sys.stderr)
        return EXIT_USAGE
    preset = targets.HistoryPreset(args.preset)
    with args.out.open("w", encoding="utf-8") as out:
        for line in history_export.openmetrics_lines(
            trace, preset=preset, namespace=args.namespace, shift_days=args.shift_days
        ):
            out.write(line + "\n")
    print(
        f"wrote {args.out}: {len(trace.targets)} targets, {trace.requests} requests as {preset.value} history "
        f"in namespace {args.namespace}; load it with\n"
        f"  promtool tsdb create-blocks-from openmetrics {args.out} DATA_DIR",
        file=sys.stderr,
    )
    return 0
