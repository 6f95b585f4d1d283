"""Reading a targets file from disk: the one place a config path becomes `ParsedTargets`."""

from __future__ import annotations

from pathlib import Path

from prewarm.core import targets


def load_config_file(path: Path) -> targets.ParsedTargets:
    """Read and parse a targets file; raise ConfigError (never OSError) when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problem = targets.Problem("--config", str(path), f"cannot be read: {e.strerror}")
        raise targets.ConfigError(str(path), [problem]) from e
    return targets.parse_config_document(text, source=str(path))
