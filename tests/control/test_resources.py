"""Loading user documents: camelCase YAML/JSON to protos, and one-line errors naming file, document and field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from meshgate.control.errors import InvalidConfig
from meshgate.control.resources import load_documents, to_document

API = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  routes:
    - method: GET
      path: /pets/{id}
      integration: {type: http, uri: "http://svc/pets/{id}", timeoutMs: 500}
"""


def test_loads_multi_document_yaml_with_defaults() -> None:
    docs = load_documents(
        API
        + "---\napiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: prod, namespace: team}\nspec: {api: pets}\n"
    )
    assert [d.WhichOneof("kind") for d in docs] == ["api", "stage"]
    assert docs[0].api.metadata.namespace == "default"
    assert docs[0].api.spec.routes[0].integration.timeout_ms == 500
    assert docs[1].stage.metadata.namespace == "team"
    doc = to_document(docs[0])
    assert doc["apiVersion"] == "meshgate.io/v1" and doc["kind"] == "Api"
    assert doc["spec"]["routes"][0]["integration"]["timeoutMs"] == 500


def test_directory_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(API)
    (tmp_path / "b.json").write_text(
        '{"apiVersion": "meshgate.io/v1", "kind": "Stage", "metadata": {"name": "dev"}, "spec": {"api": "pets"}}'
    )
    (tmp_path / "notes.txt").write_text("ignored")
    assert [d.WhichOneof("kind") for d in load_documents(tmp_path)] == ["api", "stage"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            API.replace("integration:", "integraton:"),
            "document 1 (Api default/pets): spec.routes[0].integraton: unknown field (did you mean 'integration'?)",
        ),
        (
            API.replace("timeoutMs: 500", "timeoutMs: soon"),
            "spec.routes[0].integration.timeoutMs: expected an integer, got 'soon'",
        ),
        (API.replace("routes:", "routes: 3\n    x:"), "invalid YAML"),
        (API.replace("kind: Api", "kind: Lambda"), "kind: must be one of Api, Stage, UsagePlan, ApiKey"),
        (API.replace("meshgate.io/v1", "v2"), "apiVersion: must be 'meshgate.io/v1'"),
        (API.replace("kind: Api", "kind: Deployment"), "made by `meshgate deploy`"),
        (
            "apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: a}\nspec: {api: x, variables: [1]}",
            "spec.variables: expected a map, got list",
        ),
        ("apiVersion: meshgate.io/v1\nkind: Api\nmetadata: {}\nspec: {}", "metadata.name: required"),
    ],
)
def test_errors_name_the_field_on_one_line(text: str, expected: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        load_documents(text)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pets.yaml"
    path.write_text(API + "---\n" + API.replace("path: /pets/{id}", "path: 5\n      oops: 1"))
    with pytest.raises(InvalidConfig, match=r"pets.yaml document 2 \(Api default/pets\): spec.routes\[0\]"):
        load_documents(path)


def test_api_key_value_is_hashed_and_never_kept() -> None:
    key = "k" * 32
    docs = load_documents(
        f"apiVersion: meshgate.io/v1\nkind: ApiKey\nmetadata: {{name: ci}}\nspec: {{usagePlan: gold, value: {key}}}"
    )
    assert docs[0].api_key.spec.value_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(docs[0])
    with pytest.raises(InvalidConfig, match="spec.value: required"):
        load_documents(
            "apiVersion: meshgate.io/v1\nkind: ApiKey\nmetadata: {name: ci}\nspec: {usagePlan: gold}"
        )
    with pytest.raises(InvalidConfig, match="spec.valueFrom: a Secret reference is read by the Kubernetes"):
        load_documents(
            "apiVersion: meshgate.io/v1\nkind: ApiKey\nmetadata: {name: ci}\n"
            "spec: {usagePlan: gold, valueFrom: {secretKeyRef: {name: s, key: k}}}"
        )


def test_path_given_as_a_string(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(API)
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(load_documents(str(tmp_path / "a.yaml"))) == 1
    with pytest.raises(InvalidConfig, match=r"b.json document 1 \(\? default/\?\): apiVersion"):
        load_documents(str(tmp_path))
    bad = API.replace("integration:", "integraton:", 1)
    assert bad != API
    (tmp_path / "b.json").unlink()
    (tmp_path / "c.yml").write_text(bad)
    with pytest.raises(
        InvalidConfig,
        match=r"c.yml document 1 \(Api default/pets\): spec.routes\[0\].integraton: unknown field",
    ):
        load_documents(tmp_path)
    with pytest.raises(InvalidConfig, match="no such file"):
        load_documents(tmp_path / "missing.yaml")
