"""`uds3 console`: the sagas in a browser, live.

One page (`page.html`, no build step) over a small JSON API, reading what the CLI reads: saga
state folded from the six event stores (`operator/state.py`), dead letters from their topic,
search from the vector index. Live updates come as server-sent events: the console follows the
saga and progress topics from the moment a page connects and tells the page which document
moved; the page then asks for that document's state again. Write actions (re-driving a dead
letter) need `UDS3_CONSOLE_TOKEN`, sent as a bearer token; without one set, there are none.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.cli.ops import group_letters, read_letters, redrive_letter
from services.client import Client
from services.core.config import Settings
from services.core.events import DOCUMENT_SUBMITTED, PROGRESS_EVENTS
from services.core.saga import SAGA
from services.core.validation import InvalidInput, uuid_id
from services.operator.state import SagaReader, SagaState

PAGE = Path(__file__).with_name("page.html")
NEWEST = 50  # sagas in the list


def steps_of(state: SagaState) -> list[dict[str, Any]]:
    """Each step's start (its trigger), end (its success or failure) and compensation, in
    seconds after the submission, for the page's timeline (pure)."""
    at = {m["event_type"]: _seconds(m["occurred_at"]) for m in reversed(state.history)}  # the first of each
    zero = at.get(DOCUMENT_SUBMITTED, 0.0)
    out = []
    for step in SAGA:
        start, end = at.get(step.trigger), at.get(step.success, at.get(step.failed))
        undone = at.get(step.compensated)
        out.append({"name": step.name, "service": step.service, "status": state.steps.get(step.name, ""),
                    "start": None if start is None else start - zero, "end": None if end is None else end - zero,
                    "compensated": None if undone is None else undone - zero})
    return out


def summary(state: SagaState) -> dict[str, Any]:
    submitted = next((m for m in state.history if m["event_type"] == DOCUMENT_SUBMITTED), None)
    payload = submitted["payload"] if submitted else {}
    return {"document_id": state.document_id, "status": state.status, "step": state.current_step,
            "title": payload.get("title", ""), "size_bytes": payload.get("size_bytes", 0),
            "submitted_at": state.submitted_at, "finished_at": state.finished_at, "errors": state.errors}


def create_app(settings: Settings | None = None, token: str | None = None) -> Starlette:
    settings = settings or Settings()
    reader = SagaReader(settings)

    async def page(_: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def sagas(request: Request) -> Response:
        wanted = request.query_params.get("status", "")
        ids = (await asyncio.to_thread(reader.document_ids))[-NEWEST:][::-1]
        states = [await asyncio.to_thread(reader.state, doc) for doc in ids]
        return JSONResponse([summary(s) for s in states if not wanted or s.status == wanted])

    async def saga(request: Request) -> Response:
        try:
            doc = uuid_id("document id", request.path_params["document_id"])
        except InvalidInput as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        state = await asyncio.to_thread(reader.state, doc)
        if not state.history:
            return JSONResponse({"error": f"unknown document {doc}"}, status_code=404)
        return JSONResponse({**summary(state), "steps": steps_of(state), "progress": state.progress,
                             "events": [{k: m[k] for k in ("occurred_at", "event_type", "producer", "event_id")}
                                        | {"payload": json.dumps(m["payload"], default=str)[:300]}
                                        for m in state.history]})

    async def stream(request: Request) -> Response:
        """Server-sent events: the id and type of every saga event from now on."""
        async def moves() -> AsyncIterator[str]:
            async with Client(settings) as client:
                yield ": connected\n\n"
                async for event in client.watch(int(time.time() * 1000)):
                    if await request.is_disconnected():
                        return
                    kind = "progress" if event.event_type in PROGRESS_EVENTS else "event"
                    moved = json.dumps({"document_id": event.document_id, "type": event.event_type})
                    yield f"event: {kind}\ndata: {moved}\n\n"

        return StreamingResponse(moves(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def letters(_: Request) -> Response:
        groups = group_letters(await read_letters(settings))
        return JSONResponse([{"offset": g.first.offset, "partition": g.first.partition, "origin": g.first.origin_text,
                              "key": (g.first.key or b"").decode("utf-8", "replace"), "groups": g.groups,
                              "errors": g.errors, "at": g.first.event.occurred_at.isoformat()} for g in groups])

    async def redrive(request: Request) -> Response:
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "re-driving needs the console's token (UDS3_CONSOLE_TOKEN)"},
                                status_code=403)
        partition, offset = int(request.path_params["partition"]), int(request.path_params["offset"])
        found = [x for x in await read_letters(settings) if (x.partition, x.offset) == (partition, offset)]
        if not found:
            return JSONResponse({"error": f"no dead letter at {partition}:{offset}"}, status_code=404)
        await redrive_letter(settings, found[0])
        return JSONResponse({"redriven": found[0].origin_text})

    async def search(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        if not query:
            return JSONResponse([])
        return JSONResponse(await asyncio.to_thread(_search, settings, query))

    return Starlette(routes=[
        Route("/", page), Route("/api/sagas", sagas), Route("/api/sagas/{document_id}", saga),
        Route("/api/stream", stream), Route("/api/dlq", letters),
        Route("/api/dlq/{partition:int}/{offset:int}/redrive", redrive, methods=["POST"]),
        Route("/api/search", search),
    ])


def _search(settings: Settings, query: str) -> list[dict[str, Any]]:
    from services.vector.adapters import VectorIndex
    from services.vector.embedding import load_embedder
    from services.vector.text import best_sentence

    vector = load_embedder(settings.embedder, model_dir=settings.model_dir).embed([query])[0]  # type: ignore[arg-type]
    index = VectorIndex.of(settings).open()
    try:
        return [{**hit, "sentence": best_sentence(hit["text"], query)} for hit in index.search(vector.tolist(), k=5)]
    finally:
        index.close()


def _seconds(occurred_at: str) -> float:
    return datetime.fromisoformat(occurred_at).timestamp()
