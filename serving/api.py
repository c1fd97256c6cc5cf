"""HTTP API of a serving process (replica or all-in-one worker), and the trainer's admin surface.

``POST /predict``, ``POST /explain``, ``GET /status``, ``GET /readyz``, the OpenAPI
description at ``GET /openapi.json``, and, where a trainer runs (``train`` role, worker), the
guarded admin surface: ``GET /admin/versions``, ``POST /admin/rollback``,
``POST /admin/reset-probes`` (``Authorization: Bearer $SERVE_ADMIN_TOKEN``; 401 without the
right token, 403 when no token is configured). Predictions and explanations run on the
serving thread against the snapshot being served — the same :meth:`ModelSnapshot.score` as
stream predictions — so a request never waits for training and never sees half a swap.
Every bad request gets a 4xx with a JSON ``{"error": code, "message": ...}``; nothing a
client sends can raise a 500 or stop the process.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import faust
from faust import web

from streams.cleaning import clean_text

if TYPE_CHECKING:
    from lifecycle.trainer import Trainer
    from serving.service import Serving

log = logging.getLogger(__name__)

MAX_TEXTS = 256
METHODS = ("ig", "gxi")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "not_an_object", "request body must be a JSON object")
    return body


def _task(body: dict, tasks: list[str]) -> str:
    task = body.get("task")
    if not isinstance(task, str) or not task:
        raise ApiError(400, "missing_field", "field 'task' (string) is required")
    if task not in tasks:
        raise ApiError(404, "unknown_task", f"unknown task {task!r}; tasks: {', '.join(tasks)}")
    return task


def _texts(body: dict, max_chars: int, *, single: bool = False) -> list[str]:
    if "texts" in body and not single:
        texts = body["texts"]
        if not isinstance(texts, list) or not texts:
            raise ApiError(400, "wrong_type", "field 'texts' must be a non-empty list of strings")
    elif "text" in body:
        texts = [body["text"]]
    else:
        raise ApiError(400, "missing_field", "field 'text' (string)" +
                       ("" if single else " or 'texts' (list of strings)") + " is required")
    if len(texts) > MAX_TEXTS:
        raise ApiError(413, "too_many_texts", f"at most {MAX_TEXTS} texts per request, got {len(texts)}")
    cleaned = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, "wrong_type", f"text {i} must be a string, got {type(text).__name__}")
        if len(text) > max_chars:
            raise ApiError(413, "text_too_long", f"text {i} has {len(text)} characters; max {max_chars}")
        clean = clean_text(text)
        if not clean:
            raise ApiError(422, "empty_text", f"text {i} is empty after cleaning")
        cleaned.append(clean)
    return cleaned


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except Exception:
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    return _object(body)


def openapi(tasks: list[str], max_chars: int) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    error = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}
    errors = {str(c): {"description": d, "content": {"application/json": {"schema": error}}}
              for c, d in ((400, "malformed request"), (404, "unknown task"),
                           (409, "task has no labels yet"), (413, "too large"),
                           (422, "unprocessable text or label"))}
    admin_errors = {str(c): {"description": d, "content": {"application/json": {"schema": error}}}
                    for c, d in ((401, "missing or wrong bearer token"),
                                 (403, "admin API disabled: SERVE_ADMIN_TOKEN unset"))}
    return {
        "openapi": "3.0.3",
        "info": {"title": "streamlearner worker API", "version": "1"},
        "paths": {
            "/predict": {"post": {
                "summary": "Predict labels (with the full class distribution) for one or many texts",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["task"],
                    "properties": {"task": {"type": "string", "enum": tasks}, "text": text,
                                   "texts": {"type": "array", "items": text, "maxItems": MAX_TEXTS}}}}}},
                "responses": {"200": {"description": "predictions, model version and latency"}, **errors}}},
            "/explain": {"post": {
                "summary": "Per-word attributions for the predicted (or a chosen) label",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["task", "text"],
                    "properties": {"task": {"type": "string", "enum": tasks}, "text": text,
                                   "label": {"type": "string"},
                                   "method": {"type": "string", "enum": list(METHODS), "default": "ig"}}}}}},
                "responses": {"200": {"description": "words with scores, and an HTML rendering"}, **errors}}},
            "/status": {"get": {"summary": "Model version, labels, replay memory, last update, drift",
                                "responses": {"200": {"description": "status"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: model loaded and partitions assigned",
                                "responses": {"200": {"description": "ready"},
                                              "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/admin/versions": {"get": {
                "summary": "Versions a rollback can go to (bearer token)", "security": [{"bearer": []}],
                "responses": {"200": {"description": "versions, newest first"}, **admin_errors}}},
            "/admin/rollback": {"post": {
                "summary": "Serve a kept version again (the last good one when 'version' is omitted)",
                "security": [{"bearer": []}],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "properties": {"version": {"type": "integer", "minimum": 0}}}}}},
                "responses": {"200": {"description": "the rollback event"},
                              "404": {"description": "version not kept"}, **admin_errors}}},
            "/admin/reset-probes": {"post": {
                "summary": "Draw fresh probe sets (after a genuine concept change)",
                "security": [{"bearer": []}],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "properties": {"task": {"type": "string", "enum": tasks}}}}}},
                "responses": {"200": {"description": "new probe sizes"}, **admin_errors}}},
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def register_api(app: faust.App, *, tasks: list[str], max_chars: int, admin_token: str | None,
                 serving: "Serving | None" = None, trainer: "Trainer | None" = None,
                 status: Callable[[], dict] | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
    """Routes for what this process has: prediction with ``serving``, admin with ``trainer``;
    ``ready`` adds a readiness condition to having partitions (a replica: versions caught up)."""
    tasks = sorted(tasks)
    spec = openapi(tasks, max_chars)

    def fail(view: web.View, err: ApiError) -> web.Response:
        return view.json({"error": err.code, "message": err.message}, status=err.status)

    if serving is not None:
        models = serving.models
        metrics = serving.metrics

        @app.page("/predict")
        class Predict(web.View):
            async def post(self, request: web.Request) -> web.Response:
                started = time.perf_counter()
                try:
                    body = await _json_body(request)
                    task = _task(body, tasks)
                    texts = _texts(body, max_chars)
                    snapshot = models.model_for(task)
                    scores = await serving.thread.run(snapshot.score, task, texts)
                except ApiError as err:
                    return fail(self, err)
                out = []
                for (label, confidence), dist in zip(scores.top(), scores.distributions()):
                    out.append({"label": label, "confidence": confidence if label else 0.0,
                                "probabilities": dist})
                elapsed = time.perf_counter() - started
                metrics.request_duration.labels(endpoint="predict").observe(elapsed)
                return self.json({"task": task, "model": snapshot.name,
                                  "model_version": scores.model_version, "predictions": out,
                                  "latency_seconds": elapsed})

        @app.page("/explain")
        class Explain(web.View):
            async def post(self, request: web.Request) -> web.Response:
                started = time.perf_counter()
                try:
                    body = await _json_body(request)
                    task = _task(body, tasks)
                    [text] = _texts(body, max_chars, single=True)
                    method = body.get("method", "ig")
                    if method not in METHODS:
                        raise ApiError(422, "unknown_method", f"method must be one of {METHODS}")
                    label = body.get("label")
                    if label is not None and not isinstance(label, str):
                        raise ApiError(400, "wrong_type", "field 'label' must be a string")
                    snapshot = models.model_for(task)

                    def work():
                        from learner.explain import Explainer

                        known = snapshot.labels(task)
                        if not known:
                            raise ApiError(409, "no_labels",
                                           f"task {task!r} has not learned any label yet")
                        if label is not None and label not in known:
                            raise ApiError(422, "unknown_label",
                                           f"{label!r} is not a label of {task!r}")
                        return Explainer(snapshot).explain(task, text, label=label, method=method)

                    ex = await serving.thread.run(work)
                except ApiError as err:
                    return fail(self, err)
                metrics.request_duration.labels(endpoint="explain").observe(
                    time.perf_counter() - started)
                return self.json({**ex.to_dict(), "text": ex.text, "html": ex.to_html()})

    @app.page("/status")
    class Status(web.View):
        async def get(self, request: web.Request) -> web.Response:
            body: dict[str, Any] = {}
            if serving is not None:
                m = serving.models
                body["serving"] = {"model": m.name, "model_version": m.model_version,
                                   "sequence": m.sequence, "swaps": m.swaps,
                                   "serve_setting": m.serve,
                                   "labels": {t: m.current.labels(t) for t in m.current.tasks()}}
            if trainer is not None:
                learner = trainer.learner
                drift = trainer.drift.summary() if trainer.drift is not None else None
                body.update({
                    "model_version": learner.model_version,
                    "labels": {t: learner.labels(t) for t in learner.tasks()},
                    "memory": learner.replay.sizes(),
                    "last_update_ts": trainer.last_update_ts,
                    "adapting_updates_left": getattr(learner, "adapting", 0),
                    "drift": drift,
                    "champion_version": trainer.guard.version if trainer.guard else None,
                    "pending_ack_events": trainer.durability.acks.pending_events,
                    "probe_sizes": trainer.probes.sizes(),
                    "published_version": (trainer.publisher.published_version
                                          if trainer.publisher else None),
                })
            elif serving is not None:
                body["model_version"] = serving.models.model_version
            body.update(status() if status is not None else {})
            return self.json(body)

    @app.page("/readyz")
    class Ready(web.View):
        async def get(self, request: web.Request) -> web.Response:
            try:
                assigned = len(app.consumer.assignment())
            except Exception:
                assigned = 0
            ok = assigned > 0 and (ready is None or ready())
            version = (trainer.learner.model_version if trainer is not None
                       else serving.models.model_version if serving is not None else None)
            return self.json({"ready": ok, "assigned_partitions": assigned,
                              "model_version": version}, status=200 if ok else 503)

    @app.page("/openapi.json")
    class OpenApi(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.json(spec)

    if trainer is not None:
        _register_admin(app, tasks, admin_token, trainer, fail)


def _register_admin(app: faust.App, tasks: list[str], token: str | None, trainer: "Trainer",
                    fail) -> None:
    def authorize(request: web.Request) -> None:
        """Constant-time bearer check; the token itself is never logged or echoed."""
        if not token:
            raise ApiError(403, "admin_disabled",
                           "the admin API is disabled: set SERVE_ADMIN_TOKEN on the worker")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                  token.encode()):
            log.warning("refused admin request %s from %s: missing or wrong bearer token",
                        request.path, request.remote)
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")

    @app.page("/admin/versions")
    class Versions(web.View):
        async def get(self, request: web.Request) -> web.Response:
            try:
                authorize(request)
            except ApiError as err:
                return fail(self, err)
            guard = trainer.guard
            return self.json({"model_version": trainer.learner.model_version,
                              "champion_version": guard.version if guard else None,
                              "versions": trainer.versions()})

    @app.page("/admin/rollback")
    class Rollback(web.View):
        async def post(self, request: web.Request) -> web.Response:
            try:
                authorize(request)
                body = await _json_body(request) if request.can_read_body else {}
                version = body.get("version")
                if version is not None and (not isinstance(version, int)
                                            or isinstance(version, bool) or version < 0):
                    raise ApiError(400, "wrong_type", "field 'version' must be an integer >= 0")
                try:
                    event = await trainer.rollback_to(version, "manual")
                except LookupError as e:
                    raise ApiError(404, "unknown_version", str(e)) from None
            except ApiError as err:
                return fail(self, err)
            return self.json(event)

    @app.page("/admin/reset-probes")
    class ResetProbes(web.View):
        async def post(self, request: web.Request) -> web.Response:
            try:
                authorize(request)
                body = await _json_body(request) if request.can_read_body else {}
                task = body.get("task")
                if task is not None:
                    task = _task(body, tasks)
            except ApiError as err:
                return fail(self, err)
            return self.json(await trainer.reset_probes(task))

