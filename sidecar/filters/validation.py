"""Filters: required request parameters (query strings, headers) and the JSON body against the
route's request model. A failure is a 400 (415 for the wrong content type) listing what failed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError, internal
from meshgate.sidecar.validation import BodyModel, Invalid, missing_parameters

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision

log = logging.getLogger("meshgate.sidecar.validation")


def refusal(bad: Invalid) -> GatewayError:
    return GatewayError(bad.status, bad.reason, gateway_type=bad.gw_type, details=bad.errors)


@dataclass(frozen=True, slots=True)
class RequiredParamsFilter:
    name = "validation"
    needs_body = False

    required: tuple[tuple[str, str], ...]  # (query|header, name)

    def request(self, ctx: RequestContext) -> Decision:
        bad = missing_parameters(self.required, ctx.headers, ctx.query_params())
        return None if bad is None else refusal(bad)


@dataclass(frozen=True, slots=True)
class BodyModelFilter:
    name = "validation"
    needs_body = True

    model: BodyModel

    def request(self, ctx: RequestContext) -> Decision:
        try:
            verdict = self.model.parse(ctx.content_type.decode("latin-1"), ctx.whole_body())
        except Exception:
            log.exception("request validation failed (request %s)", ctx.request_id)
            return internal()
        if isinstance(verdict, Invalid):
            return refusal(verdict)
        ctx.body_doc = verdict.doc  # parsed once: the request template reads it
        return None
