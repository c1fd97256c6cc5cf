"""``streamlearner versions`` / ``streamlearner rollback``: the operator's side of rollbacks.

Online (a trainer or worker runs): the command calls its admin API with the bearer token from
``SERVE_ADMIN_TOKEN``. Offline (``--offline``, stopped): ``CHECKPOINT_DIR`` is rearranged by
``lifecycle.rollback.rearrange`` — the same code an online rollback runs — so that the next
start resumes at the chosen version.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def admin_request(url: str, path: str, token: str | None, body: dict | None = None,
                  timeout: float = 120.0) -> tuple[int, dict]:
    """``(status, json)`` of one admin call; the token goes in the Authorization header only."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data,
                                     method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {"error": "http_error", "message": str(e)}
