"""Whatever body a submit carries, the answer is never a 5xx and every error is the contract's JSON.

The app runs in-process (TestClient, lifespan included), so no packet leaves the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app import create_app
from pipeline.settings import Settings

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# Four times the default cap, so the 5,000-level bodies below reach the parser, not the 413.
MAX_BODY_BYTES = 65_536

# Any code point, lone surrogates included: they are valid as JSON escapes.
TEXT = st.text(st.characters(exclude_categories=()), max_size=30)


def _containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # A named function, not a lambda: hypothesis would parse this file's source to describe one.
    return st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT, _containers, max_leaves=25
)
# Objects with a topic, so that some submits get through and make real jobs.
SUBMITS = st.fixed_dictionaries({"topic": TEXT}, optional={"extra": JSON_VALUES})


def _json_bytes(value: object, ensure_ascii: bool) -> bytes:
    # surrogatepass: a lone surrogate becomes the bytes a careless encoder would send.
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def _form_bytes(fields: dict[str, str]) -> bytes:
    return urlencode(fields, errors="surrogatepass").encode()


BODIES = (
    st.binary(max_size=2048)
    | st.builds(_json_bytes, JSON_VALUES | SUBMITS, st.booleans())
    | st.builds(_form_bytes, st.dictionaries(st.just("topic") | TEXT, TEXT, max_size=5))
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(llm_provider="offline", offline_llm_delay_ms=0,
                              max_queued_jobs=100_000, max_body_bytes=MAX_BODY_BYTES))
    with TestClient(app) as client:
        yield client


def post(client: TestClient, body: bytes, content_type: str) -> httpx.Response:
    return client.post("/api/jobs", content=body, headers={"Content-Type": content_type})


def assert_contract_answer(response: httpx.Response) -> None:
    """Below 500, and an error is JSON `{"error": {"code", "message"}}`."""
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str) and error["message"], error


# A fixed derivation and no example database: the same examples every run, nothing written.
@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(body=BODIES, content_type=st.sampled_from([JSON, FORM]))
def test_no_body_gets_a_server_error(client: TestClient, body: bytes, content_type: str) -> None:
    assert_contract_answer(post(client, body, content_type))


# (case, body, message): each a 500 or a misleading message once.
UNREADABLE = [
    ("arrays-5000-deep", b'{"topic": "x", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     "The body is nested too deeply to read."),
    ("objects-5000-deep", b'{"topic": "x", "n": ' + b'{"":' * 5000 + b"0" + b"}" * 5000 + b"}",
     "The body is nested too deeply to read."),
    ("number-5000-digits", b'{"topic": "x", "n": ' + b"1" * 5000 + b"}",
     "The body holds a number with too many digits to read."),
]


@pytest.mark.parametrize(("body", "message"), [case[1:] for case in UNREADABLE],
                         ids=[case[0] for case in UNREADABLE])
def test_bodies_the_parser_cannot_read(client: TestClient, body: bytes, message: str) -> None:
    response = post(client, body, JSON)
    assert_contract_answer(response)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "malformed_body", "message": message}
