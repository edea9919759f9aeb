"""``POST /v1/events``: verify, dedup, wake the worker, answer fast (202 / 200 / 401 / 503).

A work event is a wake-up: the worker pulls the next due document in dispatch order when it has a
free slot, so a busy processor still answers 202 (the event is noted; the document waits in the
queue, not in the relay's retry backoff).
"""

from __future__ import annotations

from typing import Final

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.processor.deletion import PurgeFailed
from services.processor.kb_purge import KB_DELETED_TYPE, purge_knowledge_base
from services.processor.state import ProcessorState
from shared.event_data import ReceivedEvent
from shared.events import WORK_EVENT_TYPES, EventType
from shared.signing import SignatureError, verify

log = structlog.get_logger("kbingest.processor.events")

router = APIRouter(tags=["events"])

DELETE_TYPES: Final[frozenset[EventType]] = frozenset({"document.delete_requested"})
NOT_READY_RETRY_AFTER_S: Final = "2"
# A store the purge needs was down; a short wait before the redelivery (the relay backs off further).
PURGE_RETRY_AFTER_S: Final = "5"


def _answer(status: int, result: str, **extra: object) -> JSONResponse:
    return JSONResponse({"result": result, **extra}, status_code=status)


@router.post("/v1/events")
async def receive_event(request: Request) -> JSONResponse:
    state: ProcessorState = request.app.state.processor
    body = await request.body()
    try:
        verify(state.deps.settings.relay_secret.get_secret_value(), request.headers, body)
    except SignatureError as exc:
        state.deps.metrics.events.labels("unauthorized").inc()
        return JSONResponse({"error": {"code": "invalid_signature", "message": str(exc)}}, status_code=401)
    if not state.ready or not state.worker.accepting:
        state.deps.metrics.events.labels("not_ready").inc()
        return JSONResponse(
            {"error": {"code": "not_ready", "message": state.not_ready_reason()}},
            status_code=503,
            headers={"Retry-After": NOT_READY_RETRY_AFTER_S},
        )
    try:
        event = ReceivedEvent.model_validate_json(body)
    except ValidationError as exc:
        return _malformed(state, exc)
    event_id, event_type, document_id = event.id, event.type, event.data.document_id
    bound = log.bind(event_id=str(event_id), event_type=event_type, document_id=str(document_id))
    if event_type == KB_DELETED_TYPE:
        return await _purge_knowledge_base(state, event, bound)
    if document_id is None or (event_type not in WORK_EVENT_TYPES and event_type not in DELETE_TYPES):
        state.deps.metrics.events.labels("ignored").inc()
        return _answer(200, "ignored")
    if event_type in DELETE_TYPES:
        try:
            result = await state.purge(event_id, event_type, document_id)
        except PurgeFailed as exc:
            return _purge_failed(state, exc, bound)
        state.deps.metrics.events.labels(result).inc()
        bound.info("event.delete", result=result)
        return _answer(200, result)
    outcome = await state.worker.note(event_id=event_id, event_type=event_type, document_id=document_id)
    state.deps.metrics.events.labels(outcome).inc()
    bound.info("event.received", result=outcome)
    return _answer(202 if outcome == "accepted" else 200, outcome)


def _malformed(state: ProcessorState, exc: Exception) -> JSONResponse:
    state.deps.metrics.events.labels("malformed").inc()
    return JSONResponse({"error": {"code": "malformed_event", "message": str(exc)}}, status_code=400)


def _purge_failed(state: ProcessorState, exc: PurgeFailed, bound: structlog.BoundLogger) -> JSONResponse:
    # Nothing was recorded: the relay's retry of this very event purges again.
    state.deps.metrics.events.labels("purge_failed").inc()
    bound.warning("event.delete_failed", code=exc.code, error=exc.message[:300])
    return JSONResponse(
        {"error": {"code": exc.code, "message": f"purge not done, retry later: {exc.message}"}},
        status_code=503,
        headers={"Retry-After": PURGE_RETRY_AFTER_S},
    )


async def _purge_knowledge_base(
    state: ProcessorState, event: ReceivedEvent, bound: structlog.BoundLogger
) -> JSONResponse:
    kb_id = event.data.knowledge_base_id
    if kb_id is None:
        return _malformed(state, ValueError("knowledge_base.deleted without data.knowledge_base_id"))
    try:
        result = await purge_knowledge_base(state.deps.db, state.deps.vectors, event_id=event.id, kb_id=kb_id)
    except PurgeFailed as exc:
        return _purge_failed(state, exc, bound)
    state.deps.metrics.events.labels(result).inc()
    bound.info("event.knowledge_base_deleted", knowledge_base_id=str(kb_id), result=result)
    return _answer(200, result)
