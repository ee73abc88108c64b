"""validate() reports every error of a resource at once (issue 15, part 5), without a refusal
dragging others in after it; and the stage-variable rule that deploy and apply share
(`unresolved_variables`, issue 15, part 4)."""

from __future__ import annotations

import pytest
from meshgate.control.errors import InvalidConfig
from meshgate.control.resources import load_documents, read_documents
from meshgate.control.validation import unresolved_variables, validate
from meshgate.v1 import resources_pb2

FOUR = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: Pets}
spec:
  authorizers: [{name: jwt, type: saml}]
  models: [{name: Pet, schemaJson: '{not json'}]
  routes:
    - {method: GET, path: '/pets/{id}', authorizer: jwt, requestModel: Pet,
       integration: {type: http, uri: "http://svc/pets/{id}", timeoutMs: 10}}
    - {method: FETCH, path: /a//b, integration: {type: lambda}}
"""


def test_every_error_of_a_resource_at_once() -> None:
    (res,) = load_documents(FOUR)
    with pytest.raises(InvalidConfig) as info:
        validate(res)
    fields = [e.field for e in info.value.errors]
    assert fields == [
        "metadata.name",
        "spec.authorizers[0].type",
        "spec.models[0].schemaJson",
        "spec.routes[0].integration.timeoutMs",
        "spec.routes[1].method",
        "spec.routes[1].path",
        "spec.routes[1].integration.type",
    ]
    # a refused authorizer or model is still a name: the route that uses it is not refused for it;
    # a refused path still has its parameters: {id} in the uri is not refused for it
    assert all(e.resource == "Api default/Pets" for e in info.value.errors)
    assert str(info.value).splitlines()[0].startswith("Api default/Pets: metadata.name: ")


def test_every_bad_field_of_every_document_at_once() -> None:
    text = (
        "apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: a}\nspec: {api: x, variabels: {}, hosts: 5}\n"
        "---\napiVersion: meshgate.io/v1\nkind: Api\nmetadata: {}\nspec: {routes: [{method: 1, pth: /}]}\n"
    )
    docs = read_documents(text)
    assert [[(e.field, e.message.split(" (")[0]) for e in d.errors] for d in docs] == [
        [("spec.variabels", "unknown field"), ("spec.hosts", "expected a list, got number")],
        [
            ("spec.routes[0].method", "expected a string, got number"),
            ("spec.routes[0].pth", "unknown field"),
            ("metadata.name", "required"),
        ],
    ]
    with pytest.raises(InvalidConfig) as info:
        load_documents(text)
    assert len(info.value.errors) == 5 and str(info.value).splitlines()[0].startswith("document 1 (Stage")


def _spec(*uris: str) -> resources_pb2.ApiSpec:
    spec = resources_pb2.ApiSpec()
    for i, uri in enumerate(uris):
        spec.routes.add(
            method="GET", path=f"/r{i}", integration=resources_pb2.Integration(type="http", uri=uri)
        )
    return spec


def _stage(
    variables: dict[str, str], deployment: int = 1, canary: resources_pb2.CanarySettings | None = None
) -> resources_pb2.Stage:
    st = resources_pb2.Stage(metadata=resources_pb2.ObjectMeta(name="prod"))
    st.spec.api, st.spec.deployment = "pets", deployment
    st.spec.variables.update(variables)
    if canary is not None:
        st.spec.canary.CopyFrom(canary)
    return st


def _canary(percent: float, deployment: int, **variables: str) -> resources_pb2.CanarySettings:
    return resources_pb2.CanarySettings(percent=percent, deployment=deployment, variables=variables)


def test_what_a_stage_serves_must_resolve() -> None:
    one = _spec(
        "http://${stageVariables.backend}/a", "http://${stageVariables.backend}:${stageVariables.port}/"
    )
    (err,) = [e for e in unresolved_variables(_stage({"port": "80"}), {1: one})]
    assert err.field == "spec.variables.backend" and "GET /r0" in err.message and "GET /r1" in err.message
    assert [e.field for e in unresolved_variables(_stage({}), {1: one})] == [
        "spec.variables.backend",
        "spec.variables.port",
    ]
    assert unresolved_variables(_stage({"backend": "b", "port": "1"}), {1: one}) == []
    # not deployed (or its deployment unknown): it serves nothing, needs nothing
    assert unresolved_variables(_stage({}, deployment=0), {1: one}) == []
    assert unresolved_variables(_stage({}), {}) == []


def test_a_canary_resolves_with_its_overrides_on_top() -> None:
    base, new = _spec("http://${stageVariables.backend}/"), _spec("http://${stageVariables.v2}/")
    deployments = {1: base, 2: new}
    ok = _stage({"backend": "b"}, canary=_canary(10, 2, v2="x"))
    assert unresolved_variables(ok, deployments) == []
    missing = _stage({"backend": "b"}, canary=_canary(10, 2))
    (err,) = unresolved_variables(missing, deployments)
    assert err.field == "spec.variables.v2" and err.message.startswith("undefined, and canary deployment 2")
    # the canary's overrides are the canary's only: the base does not get them
    swapped = _stage({}, canary=_canary(10, 1, backend="b"))
    assert [e.message.split(" uses")[0] for e in unresolved_variables(swapped, deployments)] == [
        "undefined, and deployment 1"
    ]
    # a canary at 0 % serves nothing
    assert unresolved_variables(_stage({"backend": "b"}, canary=_canary(0, 2)), deployments) == []
