"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://soundedit.dev/problems/"  # documentation anchors, not fetched by clients


HTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "request-too-large"}


class Problem(Exception):
    """An error the client can act on: a status, a stable ``type`` slug and a human ``detail``."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.field = field
        self.headers = headers
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return problem_body(
            self.status, self.slug, self.detail, instance=instance, field=self.field, **self.extra
        )


def problem_body(
    status: int, slug: str, detail: str, *, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "steps") -> "steps"; ("query", "x") -> "x"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (Starlette names only one route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install_problem_handlers(app: FastAPI) -> None:
    """Map every exception path of the app to a problem+json response."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.body(request.url.path), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        body = problem_body(
            422, "invalid-request", detail, instance=request.url.path, errors=errors
        )
        return problem_response(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = HTTP_SLUGS.get(exc.status_code, "http-error")
        body = problem_body(exc.status_code, slug, str(exc.detail), instance=request.url.path)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(exc.status_code, body, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        body = problem_body(
            500,
            "internal-error",
            "The server failed to handle this request.",
            instance=request.url.path,
        )
        return problem_response(500, body)


# --- OpenAPI documentation of the problem responses ----------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A stable URI naming the problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong, for a person."},
        "instance": {"type": "string", "description": "The request path."},
        "field": {"type": "string", "description": "The form field or header at fault."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("The request body could not be parsed.", "http-error", "Invalid multipart data."),
    401: (
        "Missing or invalid API key.",
        "api-key-required",
        "send an API key in the X-API-Key header",
    ),
    404: ("No such edit.", "edit-not-found", "no edit with id 0123456789abcdef0123456789abcdef"),
    409: (
        "The edit is not in a state that allows this.",
        "not-ready",
        "result.png is not available: the edit is running",
    ),
    413: (
        "An upload or the whole request is too large.",
        "upload-too-large",
        "audio exceeds 26214400 bytes",
    ),
    415: (
        "An upload is not in a format the server reads.",
        "unsupported-audio",
        "audio is not a readable audio file (WAV, FLAC, OGG or MP3)",
    ),
    422: (
        "A field is missing, malformed or out of range.",
        "out-of-range",
        "steps must be between 1 and 1000",
    ),
    429: (
        "This API key has too many edits queued or running.",
        "too-many-edits",
        "this API key has 20 edits queued or running",
    ),
    503: (
        "The queue is full or unreachable; retry after Retry-After seconds.",
        "queue-full",
        "200 edits are waiting",
    ),
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes, each a problem+json body with an example."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, slug, detail = _EXAMPLES[code]
        example = problem_body(code, slug, detail)
        responses[code] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA, "example": example}},
        }
    return responses
