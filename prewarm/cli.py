"""The `prewarm` console script: sends pod-side commands to a light module, the rest to the server CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

LIGHT_COMMANDS = ("cache", "knative")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `prewarm ...`; a pod start (`prewarm cache exec`) never imports the server stack."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["replay"]:
        from prewarm import replay_command

        return replay_command.main(args[1:])
    if args[:1] and args[0] in LIGHT_COMMANDS:
        from prewarm import cache_commands

        return cache_commands.main(args)
    from prewarm import __main__ as server_cli

    return server_cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
