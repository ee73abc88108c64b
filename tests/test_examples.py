"""Every example document loads and validates, so the examples stay true."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshgate.control.resources import load_documents
from meshgate.control.validation import validate

ROOT = Path(__file__).resolve().parent.parent
FILES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "control" / "demo_petstore.yaml"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    resources = load_documents(path)
    assert resources
    for res in resources:
        validate(res)
