"""The committed generated code in proto/meshgate/v1 matches the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_code_imports_as_meshgate_v1() -> None:
    from meshgate.v1 import control_pb2, control_pb2_grpc, resources_pb2

    assert control_pb2.DESCRIPTOR.package == "meshgate.v1"
    assert resources_pb2.Api.DESCRIPTOR.full_name == "meshgate.v1.Api"
    assert hasattr(control_pb2_grpc, "ControlServiceStub")
