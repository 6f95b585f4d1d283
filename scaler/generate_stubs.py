"""Regenerate the gRPC stubs from `scaler/externalscaler.proto` (run from the repository root).

    python -m scaler.generate_stubs

The generated modules are committed so the package needs no build step; a test checks they match
what this script produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO = Path(__file__).with_name("externalscaler.proto")


def generate(out_dir: Path) -> None:
    """Write externalscaler_pb2.py/.pyi and externalscaler_pb2_grpc.py into `out_dir`."""
    status = protoc.main(
        [
            "protoc",
            f"--proto_path={PROTO.parent}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    grpc_module = out_dir / "externalscaler_pb2_grpc.py"
    # protoc writes a top-level import; the stubs live in the `scaler` package.
    text = grpc_module.read_text().replace("import externalscaler_pb2 as", "from scaler import externalscaler_pb2 as")
    grpc_module.write_text(text)


if __name__ == "__main__":
    generate(PROTO.parent)
    sys.exit(0)
