"""The KEDA examples we ship: every prewarm trigger's metadata parses cleanly with our schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prewarm.core import targets

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "examples" / "keda").glob("scaledobject-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_prewarm_triggers_parse_without_warnings(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    meta = document["metadata"]
    triggers = [t for t in document["spec"]["triggers"] if t["type"] == "external-push"]
    assert triggers, "each example has a prewarm trigger"
    for trigger in triggers:
        assert trigger["name"] == "prewarm"
        assert trigger["metadata"]["scalerAddress"].endswith(":9090")
        spec, warnings = targets.parse_scaler_metadata(
            trigger["metadata"],
            scaled_object=targets.TargetRef(meta["namespace"], meta["name"]),
            platform_max=document["spec"]["maxReplicaCount"],
        )
        assert warnings == ()
        assert spec.max <= document["spec"]["maxReplicaCount"]
    modifiers = document["spec"].get("advanced", {}).get("scalingModifiers")
    if modifiers is not None:
        assert "prewarm" in modifiers["formula"]
