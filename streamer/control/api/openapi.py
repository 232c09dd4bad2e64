"""The OpenAPI 3.1 document, built from the declared operations and their pydantic models.

Nothing here is written by hand per endpoint: paths, parameters, bodies, responses and error
responses all come from :class:`~streamer.control.api.core.Operation`, so a schemathesis run
against ``/api/v1/openapi.json`` checks the real handlers against their real declarations.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from .core import Operation

REF = "#/components/schemas/{model}"
_DESCRIPTIONS = {400: "Bad input: the field is named", 401: "No valid bearer token",
                 403: "Not allowed in these zones (audited)", 404: "Not found",
                 409: "Conflicts with the current state", 413: "Body too large",
                 415: "Send a content type the operation takes",
                 429: "Too many attempts: wait for Retry-After seconds",
                 503: "State store or broker unavailable"}


class _Schemas:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
        """A model by its own name in either mode: request and response schemas of one model
        agree (checked), and a nested model is named the same way, so a name never means two
        schemas (``Speaker`` once stood for ``SpeakerOut``'s schema)."""
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, sub in schema.pop("$defs", {}).items():
            self._add(name, sub)
        ref = {"$ref": REF.format(model=model.__name__)}
        if schema != ref:  # a recursive model (ZoneNode) comes as a $ref to its own $defs
            self._add(model.__name__, schema)
        return ref

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        if self.defs.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas named {name}: name the models apart")


def build(operations: list[Operation], title: str = "Loa API", version: str = "1") -> dict[
        str, Any]:
    schemas = _Schemas()
    error_ref = None
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        from .core import ErrorBody

        error_ref = error_ref or schemas.ref(ErrorBody, "serialization")
        entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                 "tags": [op.tag]}
        params = [{"name": n, "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999}
                   if op.path_types.get(n) is int else {"type": "string", "minLength": 1,
                                                        "maxLength": 400}}
                  for n in re.findall(r"{(\w+)}", op.path)]
        if op.query is not None:
            qs = op.query.model_json_schema(ref_template=REF)
            required = set(qs.get("required", []))
            for name, prop in qs.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required,
                               "schema": prop})
        if params:
            entry["parameters"] = params
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schemas.ref(op.body)}}}
        elif op.upload is not None:
            entry["requestBody"] = {"required": True, "content": op.upload}
        ok: dict[str, Any] = {"description": "OK"}
        content: dict[str, Any] = {}
        if op.response is not None:  # with produces too: one operation, two representations
            content["application/json"] = {"schema": schemas.ref(op.response, "serialization")}
        content.update(op.produces or {})
        if content:
            ok["content"] = content
        responses: dict[str, Any] = {str(op.status): ok}
        errors = set(op.errors) | ({413} if op.body or op.upload else set())
        for status in sorted(errors):
            responses[str(status)] = {"description": _DESCRIPTIONS[status], "content": {
                "application/json": {"schema": error_ref}}}
        entry["responses"] = responses
        if op.auth:
            entry["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Loa control plane. Errors are {error, field}; see docs/api.md."},
        "paths": paths,
        "components": {"schemas": schemas.defs,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
