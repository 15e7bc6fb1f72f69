"""Admission webhook server: JSON-patch diff, AdmissionReview wire format, TLS and certificate rotation."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch  # an independent RFC 6902 implementation, used as the oracle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from localcache.runtime.clock import FakeClock
from localcache.runtime.webhook import (
    AdmissionRequest,
    AdmissionResponse,
    WebhookServer,
    escape_pointer,
    json_patch,
    review_response,
)
from localcache.testing.certs import TinyCA

# --- JSON patch ------------------------------------------------------------------------------------
keys = st.sampled_from(["a", "b", "c", "~", "/", "a/b", "~1", "~0x", "", "metadata", "0"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, 1.0]), st.text(max_size=3)
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=20,
)
json_objects = st.dictionaries(keys, json_values, max_size=5)


def strict(value: Any) -> str:
    """A canonical JSON form: ``true`` and ``1`` differ (Python's == forgets it); ``1`` and ``1.0``
    are the same JSON number, so integral floats are written as integers."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(json_objects, json_objects)
def test_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    ops = json_patch(old, new)
    before = copy.deepcopy(old)
    result = jsonpatch.JsonPatch(ops).apply(old, in_place=False)
    assert strict(result) == strict(new)
    assert strict(old) == strict(before), "diffing must not mutate its input"


@settings(max_examples=200, deadline=None)
@given(json_objects)
def test_patch_of_equal_objects_is_empty(obj: dict[str, Any]) -> None:
    assert json_patch(obj, copy.deepcopy(obj)) == []


def test_patch_escapes_pointer_tokens() -> None:
    ops = json_patch({"metadata": {"annotations": {}}}, {"metadata": {"annotations": {"a/b~c": "x"}}})
    assert ops == [{"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "x"}]
    assert escape_pointer("~1") == "~01"


def test_patch_distinguishes_bool_from_int() -> None:
    assert json_patch({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]


def test_patch_shrinking_list_removes_from_the_end() -> None:
    ops = json_patch({"l": [1, 2, 3, 4]}, {"l": [1]})
    assert ops == [
        {"op": "remove", "path": "/l/3"},
        {"op": "remove", "path": "/l/2"},
        {"op": "remove", "path": "/l/1"},
    ]


# --- server ----------------------------------------------------------------------------------------
def write_pair(ca: TinyCA, directory: Path) -> None:
    ca.serving(["127.0.0.1"]).write(directory, "tls")


def client_context(ca: TinyCA) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.cert_pem.decode())


def review(obj: dict[str, Any], uid: str = "u-1", operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "operation": operation,
            "namespace": "ns1",
            "name": obj["metadata"]["name"],
            "object": obj,
            "oldObject": None,
            "userInfo": {"username": "alice"},
        },
    }


async def add_label(req: AdmissionRequest) -> AdmissionResponse:
    assert req.object is not None
    obj = copy.deepcopy(req.object)
    obj["metadata"].setdefault("labels", {})["seen-by"] = req.user_info["username"]
    return AdmissionResponse.mutate(obj)


async def deny_all(req: AdmissionRequest) -> AdmissionResponse:
    return AdmissionResponse.deny(f"{req.name} is not welcome", code=403)


async def explode(req: AdmissionRequest) -> AdmissionResponse:
    raise KeyError("spec.boom")


async def no_change(req: AdmissionRequest) -> AdmissionResponse:
    return AdmissionResponse.mutate(copy.deepcopy(req.object or {}))


class Running:
    def __init__(self, server: WebhookServer, task: asyncio.Task[None], clock: FakeClock, ca: TinyCA) -> None:
        self.server, self.task, self.clock, self.ca = server, task, clock, ca

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    ca = TinyCA()
    write_pair(ca, tmp_path)
    clock = FakeClock()
    server = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path, cert_poll_interval=5, clock=clock)
    server.register("/mutate", add_label)
    server.register("/deny", deny_all)
    server.register("/explode", explode)
    server.register("/noop", no_change)
    task = asyncio.create_task(server.start())
    await asyncio.wait_for(server.wait_started(), 10)
    try:
        yield Running(server, task, clock, ca)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def post(r: Running, path: str, body: Any, ca: TinyCA | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(r.url(path), json=body, ssl=client_context(ca or r.ca)) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def metric(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_mutating_handler_returns_base64_json_patch(running: Running) -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns1"}}
    before = metric("controller_runtime_webhook_requests_total", {"webhook": "/mutate", "code": "200"})
    status, body = await post(running, "/mutate", review(obj, uid="abc"))
    assert status == 200
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    resp = body["response"]
    assert resp["uid"] == "abc" and resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    patched = jsonpatch.JsonPatch(ops).apply(obj, in_place=False)
    assert patched["metadata"]["labels"] == {"seen-by": "alice"}
    after = metric("controller_runtime_webhook_requests_total", {"webhook": "/mutate", "code": "200"})
    assert after == before + 1
    assert metric("controller_runtime_webhook_requests_in_flight", {"webhook": "/mutate"}) == 0
    assert metric("controller_runtime_webhook_latency_seconds_count", {"webhook": "/mutate"}) >= 1


async def test_unchanged_object_gives_no_patch(running: Running) -> None:
    obj = {"metadata": {"name": "cm"}}
    _, body = await post(running, "/noop", review(obj))
    assert body["response"]["allowed"] is True
    assert "patch" not in body["response"] and "patchType" not in body["response"]


async def test_denial_carries_code_and_message(running: Running) -> None:
    _, body = await post(running, "/deny", review({"metadata": {"name": "cm9"}}, uid="d-1"))
    resp = body["response"]
    assert resp["uid"] == "d-1" and resp["allowed"] is False
    assert resp["status"]["code"] == 403 and resp["status"]["message"] == "cm9 is not welcome"
    assert "patch" not in resp


async def test_handler_exception_is_a_clear_500_denial(running: Running) -> None:
    status, body = await post(running, "/explode", review({"metadata": {"name": "cm7"}}, uid="e-1"))
    assert status == 200
    resp = body["response"]
    assert resp["uid"] == "e-1" and resp["allowed"] is False
    assert resp["status"]["code"] == 500
    message = resp["status"]["message"]
    assert "/explode" in message and "ns1/cm7" in message and "KeyError" in message and "spec.boom" in message
    # the server survived: the next request is served
    status, body = await post(running, "/deny", review({"metadata": {"name": "x"}}))
    assert status == 200 and body["response"]["allowed"] is False


async def test_malformed_review_is_a_400(running: Running) -> None:
    status, text = await post(running, "/deny", {"kind": "AdmissionReview"})
    assert status == 400 and "request.uid" in text
    assert metric("controller_runtime_webhook_requests_total", {"webhook": "/deny", "code": "400"}) >= 1


async def test_plain_http_is_refused(running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"http://127.0.0.1:{running.server.port}/deny", json={}) as resp:
                await resp.read()


async def test_rotated_certificate_is_served_without_restart(running: Running, tmp_path: Path) -> None:
    new_ca = TinyCA("rotated-ca")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(running, "/deny", review({"metadata": {"name": "x"}}), ca=new_ca)
    write_pair(new_ca, tmp_path)
    reloads = running.server.certs.reloads
    await running.clock.advance(5)  # one poll period of the watcher, in virtual time
    assert running.server.certs.reloads == reloads + 1
    status, body = await post(running, "/deny", review({"metadata": {"name": "x"}}), ca=new_ca)
    assert status == 200 and body["response"]["allowed"] is False
    assert not running.task.done()
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(running, "/deny", review({"metadata": {"name": "x"}}))  # old CA no longer matches


async def test_half_written_pair_keeps_the_old_certificate(running: Running, tmp_path: Path) -> None:
    other = TinyCA("other").serving(["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(other.cert_pem)  # key not written yet: mismatch
    await running.clock.advance(5)
    status, _ = await post(running, "/deny", review({"metadata": {"name": "x"}}))
    assert status == 200


def test_register_rejects_bad_and_duplicate_paths(tmp_path: Path) -> None:
    server = WebhookServer(cert_dir=tmp_path)
    server.register("/a", deny_all)
    with pytest.raises(ValueError, match="already registered"):
        server.register("/a", deny_all)
    with pytest.raises(ValueError, match="must start with"):
        server.register("b", deny_all)


async def test_missing_certificate_fails_start_with_the_path(tmp_path: Path) -> None:
    server = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"tls\.crt"):
        await server.start()


async def test_response_echoes_the_review_api_version(running: Running) -> None:
    body = review({"metadata": {"name": "cm"}}, uid="b-1")
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    _, answer = await post(running, "/deny", body)
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1" and answer["response"]["uid"] == "b-1"


async def test_warnings_are_passed_through() -> None:
    async def warn(req: AdmissionRequest) -> AdmissionResponse:
        return AdmissionResponse.allow(warnings=[f"{req.name} uses a deprecated field"])

    resp = review_response(
        "u", await warn(AdmissionRequest({"uid": "u", "name": "cm"})), None, "admission.k8s.io/v1"
    )
    assert resp["response"]["warnings"] == ["cm uses a deprecated field"] and resp["response"]["allowed"]
