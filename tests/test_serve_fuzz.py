"""Fuzz the whole HTTP API from its own OpenAPI schema (schemathesis, in-process over ASGI).

Every operation of ``/openapi.json`` gets requests generated from its schema,
valid ones (positive mode) and ones that break it (negative mode: wrong types,
missing fields, out-of-range numbers), about 40 of each per operation, bounded
to about a minute in all. No answer may be a 5xx, and every error (>= 400) must
be a JSON ``{"status", "error", "detail"}`` of its own status. Writes are
allowed, on a copy of the index, so the write routes are fuzzed too.
"""

from __future__ import annotations

import shutil
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from stvh.serve import ServeSettings, create_app  # noqa: E402
from stvh.serve.service import Service  # noqa: E402

EXAMPLES = 40          # per operation and mode
BUDGET_S = 90          # stop generating once this much time has gone (a slow, shared machine)


def _header(response, name: str) -> str:
    value = response.headers.get(name) or ""
    return value[0] if isinstance(value, list) else value  # schemathesis keeps every value of a header


def _problem(case, response) -> str | None:
    """Why an answer breaks the rules, or ``None``."""
    status = response.status_code
    where = f"{case.method} {case.formatted_path} query={case.query!r} body={repr(case.body)[:120]}"
    if status >= 500:
        return f"{status} for {where}: {response.text[:200]}"
    if status >= 400:
        if not _header(response, "content-type").startswith("application/json"):
            return f"{status} without a JSON body for {where}"
        body = response.json()
        if body.get("status") != status or not body.get("error") or not isinstance(body.get("detail"), str):
            return f"{status} with a body that is not an error object for {where}: {body!r}"[:400]
    return None


@pytest.fixture(scope="module")
def fuzz_app(serve_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    shutil.copy(serve_world["index"], tmp / "index.npz")
    settings_ = ServeSettings(run=serve_world["run"], index=tmp / "index.npz", allow_writes=True,
                              uploads=tmp / "uploads", allowed_hosts=("testserver",))  # the ASGI client's Host
    return create_app(Service(settings_))


def test_fuzz_the_api_from_its_openapi_schema(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    problems: list[str] = []
    calls = 0
    started = time.monotonic()
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "GET /api/health", "GET /api/clips", "POST /api/search", "POST /api/clips", "DELETE /api/clips/{clip_id}"}
    for operation in operations:
        for mode in schemathesis.GenerationMode:
            if time.monotonic() - started > BUDGET_S:
                break

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                nonlocal calls
                calls += 1
                problem = _problem(case, case.call())
                if problem:
                    problems.append(problem)

            try:
                fuzz()
            except Unsatisfiable:  # e.g. no request breaks a free-text path parameter
                pass
    assert calls >= 10 * len(operations), f"only {calls} requests were made"
    assert not problems, f"{len(problems)} bad answers, e.g.:\n" + "\n".join(problems[:5])
