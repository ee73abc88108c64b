"""Regenerate the Python code for proto/meshgate/v1/*.proto (committed artifact).

Usage: python proto/generate.py [--check]. With --check, exit 1 if the
committed files differ from what grpcio-tools would generate now.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = pathlib.Path(__file__).resolve().parent
V1 = ROOT / "meshgate" / "v1"


def generate(out: pathlib.Path) -> None:
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT)) for p in V1.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    ns = parser.parse_args()
    if not ns.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        fresh = pathlib.Path(tmp) / "meshgate" / "v1"
        stale = []
        for new in sorted(fresh.iterdir()):
            old = V1 / new.name
            if not old.exists() or old.read_bytes() != new.read_bytes():
                stale.append(new.name)
        for old in V1.glob("*_pb2*.py*"):
            if not (fresh / old.name).exists():
                stale.append(old.name)
    if stale:
        print("stale generated code: " + ", ".join(stale) + " (run python proto/generate.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
