"""The gateway driven by the official `openai`, `anthropic` and `google-genai`
Python SDKs.

Upstream is `mock_upstream.py` over real TLS on loopback. Each test asserts on
what the SDK got, what the mock upstream saw, and the signed receipt the
gateway spooled. The last test stops every gateway (SIGTERM: exit 0 and a
close record) and greps spools and logs for anything private.

Tests run in file order: the privacy sweep at the end covers everything the
earlier tests sent.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import botocore.eventstream
import botocore.exceptions
try:
    import httpx
except ImportError:  # openai 3 and anthropic 2 are built on the httpx2 fork
    import httpx2 as httpx
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from conftest import (
    ANTHROPIC_CLIENT_KEY,
    AZURE_API_VERSION,
    AZURE_CLIENT_KEY,
    AZURE_KEYS,
    ANTHROPIC_KEYS,
    BEDROCK_CLIENT_KEY_ID,
    BEDROCK_CLIENT_SECRET,
    BEDROCK_KEY_ID,
    BEDROCK_SECRET,
    ENTRA_CLIENT_ID,
    ENTRA_TENANT,
    GCP_POOL,
    GCP_SERVICE_ACCOUNT,
    STS_ROLE,
    STS_TOKEN,
    VERTEX_CLIENT_TOKEN,
    GEMINI_CLIENT_KEY,
    GEMINI_KEYS,
    GEMINI_PRICING,
    ANTHROPIC_PRICING,
    COMPLETION_MARKER,
    CORR_PREFIX,
    OPENAI_CLIENT_KEY,
    OPENAI_KEYS,
    PROMPT_MARKER,
    TIERED_PRICING,
    Gateway,
    GatewayFactory,
    Mocks,
    Pki,
    base_providers,
    doc,
    main_manifests,
    new_corr,
    run,
    wait_until,
)

RID = "x-tollgate-receipt-id"
OPENAI_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-haiku-4-5"
COMPLETION_TEXT = f"{COMPLETION_MARKER} answer from primary"
STREAM_TEXT = COMPLETION_TEXT + "Hello from the mock upstream."
CHAT_USAGE = {"input_tokens": 1200, "output_tokens": 300, "cached_tokens": 200}
CHAT_COST = 345  # (1200-200)*0.15 + 200*0.075 + 300*0.6 micro-USD
CLAUDE_USAGE = {"input_tokens": 250, "output_tokens": 40, "cached_tokens": 0}
CLAUDE_COST = 360  # 250*0.8 + 40*4
RESPONSES_USAGE = {"input_tokens": 700, "output_tokens": 50, "cached_tokens": 200}
RESPONSES_COST = 120  # (700-200)*0.15 + 200*0.075 + 50*0.6
PEM_SECRET = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----\n"
)
AWS_KEY = "AKIAZ7Q3L5N2R4T6V2WX"


def prompt(text: str = "Say hello.") -> str:
    return f"{text} {PROMPT_MARKER}"


def msgs(text: str = "Say hello.") -> list[dict]:
    return [{"role": "user", "content": prompt(text)}]


def assert_openai_error(resp: Any, status: int) -> dict:
    """An OpenAI-style error body: {"error": {"message", "type", ...}} and nothing else."""
    assert resp.status_code == status, f"status {resp.status_code}, expected {status}: {resp.text[:500]}"
    body = json.loads(resp.text if hasattr(resp, "text") else resp.read())
    assert set(body) == {"error"}, f"not an OpenAI error body: {body}"
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], body
    assert isinstance(err.get("type"), str) and err["type"], body
    return err


def assert_anthropic_error(resp: Any, status: int, error_type: str) -> dict:
    """An Anthropic-style error body: {"type": "error", "error": {"type", "message"}}."""
    assert resp.status_code == status, f"status {resp.status_code}, expected {status}: {resp.text[:500]}"
    body = json.loads(resp.text)
    assert body.get("type") == "error", f"not an Anthropic error body: {body}"
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    return body["error"]


def assert_refused(r: dict, status: int, decision: str) -> None:
    assert r["response_status"] == status, r
    assert r["verdict"]["decision"] == decision, r["verdict"]
    assert r["lane"] == "live", r


def raw_post(gw: Gateway, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.api_port, timeout=30)
    try:
        h = {"content-type": "application/json", "authorization": f"Bearer {OPENAI_CLIENT_KEY}", **(headers or {})}
        conn.request(method, path, body=body if method != "GET" else None, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class RawResp:
    """Adapts (status, headers, body) to the attributes the error helpers read."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code = status
        self.headers = headers
        self.text = body.decode(errors="replace")


def upstream_key(record: dict) -> str | None:
    h = record["headers"]
    return h.get("x-api-key") or h.get("authorization")


# =========================================================================== startup and admin


def test_gateway_starts_ready_and_live(gw: Gateway) -> None:
    status, body, _ = gw.admin_get("/live")
    assert status == 200, body
    status, body, _ = gw.admin_get("/startup")
    assert status == 200 and body == f"started: policy {gw.policy_hash}\n", body
    status, body, _ = gw.admin_get("/ready")
    assert status == 200, body
    assert gw.policy_hash in body, f"/ready should name the policy in force: {body!r}"
    assert len(gw.policy_hash) == 64 and int(gw.policy_hash, 16) >= 0
    lines = gw.spool_lines()
    assert lines and "certificate" in lines[0], f"the spool must open with the key certificate: {lines[:1]}"
    status, body, _ = gw.admin_get("/metrics")
    assert status == 200 and 'tollgate_gateway_overload_refusals{bound="connections"} 0' in body, body


def test_a_thousand_idle_and_two_hundred_slow_clients_hold_up_nobody(gw: Gateway) -> None:
    """Fault: 1,000 idle connections and 200 that send a request head a few
    bytes at a time (slowloris) stay open on the data port while the app's
    ordinary calls are answered; the gateway refuses nothing (4,096
    connections allowed; heads get 120 s)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    # The gateway raises its own soft limit to the hard one at start.
    limits = Path(f"/proc/{gw.proc.pid}/limits").read_text()
    (gw_soft,) = [line.split()[3] for line in limits.splitlines() if line.startswith("Max open files")]
    assert gw_soft == "unlimited" or int(gw_soft) >= 1300, f"the gateway may open only {gw_soft} files"
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            held.append(socket.create_connection(("127.0.0.1", gw.api_port), timeout=5))
        slow = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", gw.api_port), timeout=5)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            slow.append(s)
        held.extend(slow)
        for round_ in range(5):
            for s in slow:
                s.sendall(b"a")  # a byte per client per round: never a whole head
            r = gw.openai().chat.completions.create(model=OPENAI_MODEL, messages=msgs())
            assert r.choices[0].message.content == COMPLETION_TEXT, round_
        _, body, _ = gw.admin_get("/metrics")
        for bound in ("connections", "requests_in_flight"):
            assert f'tollgate_gateway_overload_refusals{{bound="{bound}"}} 0' in body, body
    finally:
        for s in held:
            s.close()


def test_a_full_spool_filesystem_fails_closed_loses_nothing_and_recovers(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    """Fault: the spool's filesystem fills up. The gateway runs with its spool
    on a 512 KiB tmpfs in a mount namespace of its own (nothing on the host
    changes), which the test fills from outside through /proc/PID/root.
    Requests then fail closed (503, saying why) while every line already
    spooled stays whole; receipts of requests already answered wait in memory.
    When space returns the gateway takes requests again, and every receipt id
    any response carried is in the spool, in one unbroken chain."""
    import errno
    import os

    fgw = gateways.create("full-spool")
    fgw.spool_dir.mkdir(parents=True, exist_ok=True)
    mount = 'mount -t tmpfs -o size=512k tollgate-test-spool "$0" && exec "$@"'
    docs = [
        *base_providers(pki, mocks),
        doc("EgressPolicy", "default", {"allow": [{"providerRef": "openai-mock", "models": [OPENAI_MODEL]}]}),
    ]
    fgw.start(docs, wrap=["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(fgw.spool_dir)])
    inside = Path(f"/proc/{fgw.proc.pid}/root")
    fgw.spool_path = inside / fgw.spool_path.relative_to("/")
    spool_dir = inside / fgw.spool_dir.relative_to("/")
    assert fgw.spool_path.exists(), "the spool is on the gateway's own tmpfs"
    assert not (fgw.spool_dir / fgw.spool_path.name).exists(), "and not on the host's filesystem"
    client = fgw.openai()
    answered: list[str] = []

    def call() -> None:
        raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs())
        answered.append(raw.headers.get(RID))

    def fill() -> None:
        """Fills the filesystem to the last byte."""
        fd = os.open(spool_dir / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (65536, 4096, 512, 64, 8, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        break
        finally:
            os.close(fd)

    def until_refused() -> None:
        """The spool file's last page may still take a line or two; then
        requests are refused, with a reason, and receipted once the spool
        takes writes."""
        for _ in range(50):
            try:
                call()
            except openai.APIStatusError as e:
                assert e.status_code == 503 and "receipt spool" in e.message, e
                if e.response.headers.get(RID):
                    answered.append(e.response.headers[RID])
                return
        raise AssertionError("requests are still served with a full spool")

    for _ in range(3):
        call()
    fill()
    until_refused()
    status, body, _ = fgw.admin_get("/ready")
    assert status == 503 and "spool" in body, body
    def whole_lines() -> bool:
        # A refused write is cut back at once; a read may still catch one in
        # the instant between, so a partial line must not last.
        text = fgw.spool_path.read_text()
        try:
            return text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
        except ValueError:
            return False

    wait_until(whole_lines, 3, what="a spool of whole lines")

    # Space returns: the gateway writes what it kept and takes requests again.
    (spool_dir / "filler").unlink()
    wait_until(lambda: fgw.admin_get("/ready")[0] == 200, 15, what="the gateway ready again")
    call()
    def whole_spool() -> list[dict] | None:
        """The spool's lines from one read, once every answered receipt is in
        it (a read can catch the writer mid-line: then it is read again)."""
        text = fgw.spool_path.read_text()
        if not text.endswith("\n"):
            return None
        lines = [json.loads(line) for line in text.splitlines()]
        ids = {((line.get("envelope") or {}).get("record") or {}).get("receipt", {}).get("body", {}).get("id") for line in lines}
        return lines if ids >= set(answered) else None

    lines = wait_until(whole_spool, 10, what="every answered request's receipt in the spool")
    seqs = [line["envelope"]["seq"] for line in lines if "envelope" in line]
    assert seqs == list(range(1, len(seqs) + 1)), f"the chain has a gap or a repeat: {seqs}"

    # Full again, then told to stop: a stopping gateway keeps trying for 5 s,
    # so space that returns meanwhile still gets everything written, close
    # record last. A process of the test holds the gateway's mount namespace,
    # so its spool can be read after it exits; the files are then copied to
    # the host for the suite's last checks.
    fill()
    until_refused()
    holder = subprocess.Popen(["nsenter", f"--mount=/proc/{fgw.proc.pid}/ns/mnt", "sleep", "600"])
    try:
        held = Path(f"/proc/{holder.pid}/root") / fgw.spool_dir.relative_to("/")
        wait_until(lambda: (held / fgw.spool_path.name).exists(), 5, what="the namespace held")
        fgw.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert fgw.proc.poll() is None, "it waits for space before giving up"
        (held / "filler").unlink()
        assert fgw.stop() == 0
        for f in held.iterdir():
            if f.is_file() and f.name != "filler":
                (fgw.spool_dir / f.name).write_bytes(f.read_bytes())
    finally:
        holder.kill()
        holder.wait()
    fgw.spool_path = fgw.spool_dir / fgw.spool_path.name
    last = fgw.spool_lines()[-1]["envelope"]["record"]
    assert last["close"]["close"]["reason"] == "shutdown", last
    assert {r["id"] for r in fgw.receipts()} >= set(answered), "a receipt kept in memory was lost at shutdown"
    seqs = [line["envelope"]["seq"] for line in fgw.spool_lines() if "envelope" in line]
    assert seqs == list(range(1, len(seqs) + 1)), f"the chain has a gap or a repeat: {seqs}"


# =========================================================================== 1. OpenAI


def test_openai_chat_plain(gw: Gateway, mocks: Mocks, pki: Pki) -> None:
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs(), user=corr)
    rid = raw.headers.get(RID)
    resp = raw.parse()
    assert resp.choices[0].message.content == COMPLETION_TEXT
    assert resp.id.startswith("chatcmpl-mock-")
    assert resp.usage.prompt_tokens == 1200 and resp.usage.completion_tokens == 300
    assert resp.system_fingerprint == "fp_primary"

    r = gw.receipt(rid)
    assert r["verdict"]["decision"] == "allow" and r["verdict"]["reason"] == "allowed", r["verdict"]
    assert r["response_status"] == 200
    assert r["lane"] == "live"
    assert r["provider"] == "openai-mock"
    assert r["model_requested"] == OPENAI_MODEL
    assert r["model_served"] == resp.model == "gpt-4o-mini-2024-07-18"
    assert r["usage"] == CHAT_USAGE
    assert r["cost_micro_usd"] == CHAT_COST
    up = r["upstream"]
    assert up["host"] == "localhost"
    assert up["tls_cert_sha256"] == pki.leaf_der_sha256
    assert up["provider_request_id"] == resp.id
    assert up["key_count"] == 2 and up["key_index"] in (0, 1)
    # The receipt hashes exactly what the client sent and received.
    assert r["request_sha256"] == hashlib.sha256(raw.http_request.content).hexdigest()
    assert r["response_sha256"] == hashlib.sha256(raw.content).hexdigest()
    assert r["response_length"] == len(raw.content)

    (seen,) = mocks.primary.for_corr(corr)
    assert seen["path"] == "/v1/chat/completions" and seen["model"] == OPENAI_MODEL
    key = OPENAI_KEYS[sorted(OPENAI_KEYS)[up["key_index"]]]
    assert seen["headers"].get("authorization") == f"Bearer {key}", "the key used must be the one the receipt's key_index names"
    assert seen["headers"].get("host") == f"localhost:{mocks.primary.port}"
    assert raw.headers.get("x-request-id", "").startswith("req_mock_"), "the provider's x-request-id is passed back"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_azure_openai_client_through_the_gateway(gw: Gateway, mocks: Mocks, pki: Pki, stream: bool) -> None:
    """The openai package's AzureOpenAI client, pointed at the sidecar as at a
    resource: the deployment in its path picks the model, the gateway calls
    the Azure provider at the deployment path with the provider's api-key and
    api-version, and the app's own key never leaves."""
    corr = new_corr()
    client = gw.azure()
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-prod", messages=msgs(), user=corr, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == STREAM_TEXT
        usage = next(c.usage for c in chunks if c.usage)
        assert (usage.prompt_tokens, usage.completion_tokens) == (1200, 300)
    else:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-prod", messages=msgs(), user=corr)
        assert raw.parse().choices[0].message.content == COMPLETION_TEXT
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["decision"] == "allow", r["verdict"]
    assert (r["provider"], r["model_requested"], r["lane"]) == ("azure-mock", "gpt-4o-prod", "live")
    assert r["usage"] == CHAT_USAGE and r["cost_micro_usd"] == CHAT_COST
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256
    assert (r["upstream"]["key_index"], r["upstream"]["key_count"]) == (0, 1)

    (seen,) = mocks.primary.for_corr(corr)
    assert seen["path"] == f"/openai/deployments/gpt-4o-prod/chat/completions?api-version={AZURE_API_VERSION}", seen["path"]
    assert seen["azure"] == {"deployment": "gpt-4o-prod", "api_version": AZURE_API_VERSION, "auth": "api-key"}
    assert seen["headers"].get("api-key") == AZURE_KEYS["key-1"]
    assert "authorization" not in seen["headers"], "no bearer token next to the api-key"
    assert AZURE_CLIENT_KEY not in json.dumps(seen["headers"])


def test_azure_openai_deployments_outside_the_policy_are_refused(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        gw.azure().chat.completions.create(model="gpt-4o-unlisted", messages=msgs(), user=corr)
    assert_openai_error(exc.value.response, 403)
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert r["model_requested"] == "gpt-4o-unlisted"
    assert not mocks.primary.for_corr(corr)
    # A path that is no Azure operation is not served at all.
    status, _, _ = raw_post(gw, "/openai/deployments/gpt-4o-prod/files", b"{}")
    assert status == 404


GEMINI_MODEL = "gemini-2.5-flash"
# promptTokenCount 1200 (200 of them cached), candidates 300 + thoughts 50.
GEMINI_USAGE = {"input_tokens": 1200, "output_tokens": 350, "cached_tokens": 200, "reasoning_tokens": 50}
GEMINI_COST = 1190  # 1000*0.30 + 200*0.075 + 350*2.5 micro-USD


def gemini_receipt_id(response: Any) -> str:
    """The receipt id the gateway put on a Gemini SDK response's HTTP headers."""
    headers = response.sdk_http_response.headers or {}
    return {k.lower(): v for k, v in headers.items()}.get(RID, "")


def assert_gemini_seen(seen: dict, method: str, model: str = GEMINI_MODEL) -> None:
    """The mock got the provider's key, at the model's path, and nothing of the app's key."""
    assert seen["gemini"] == {"version": "v1beta", "model": model, "method": method}, seen["path"]
    assert seen["headers"].get("x-goog-api-key") == GEMINI_KEYS["key-1"]
    assert "authorization" not in seen["headers"]
    assert GEMINI_CLIENT_KEY not in json.dumps(seen["headers"]) + seen["path"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_gemini_generate_content_through_the_gateway(gw: Gateway, mocks: Mocks, pki: Pki, stream: bool) -> None:
    """The Google Gen AI SDK's Gemini client, pointed at the sidecar as at the
    Gemini API: the model in its path picks the provider, the gateway calls
    it with the provider's x-goog-api-key, and counts usage from
    usageMetadata (the last chunk's, in a stream), thoughts as output."""
    corr = new_corr()
    client = gw.gemini()
    contents = prompt(f"Say hello. {corr}")
    if stream:
        chunks = list(client.models.generate_content_stream(model=GEMINI_MODEL, contents=contents))
        assert "".join(c.text or "" for c in chunks) == STREAM_TEXT
        usage = chunks[-1].usage_metadata
        receipt_id = gemini_receipt_id(chunks[0])
    else:
        answer = client.models.generate_content(model=GEMINI_MODEL, contents=contents)
        assert answer.text == COMPLETION_TEXT
        usage = answer.usage_metadata
        receipt_id = gemini_receipt_id(answer)
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (1200, 300, 50)
    r = gw.receipt(receipt_id)
    assert r["verdict"]["decision"] == "allow", r["verdict"]
    assert (r["api"], r["provider"], r["model_requested"], r["model_served"], r["lane"]) == (
        "gemini", "gemini-mock", GEMINI_MODEL, f"{GEMINI_MODEL}-001", "live")
    method = "streamGenerateContent" if stream else "generateContent"
    assert r["route"] == f"/{{version}}/models/{{model}}:{method}"
    assert r["usage"] == GEMINI_USAGE, r["usage"]
    assert r["cost_micro_usd"] == GEMINI_COST
    assert r["pricing"] == {"long_context": False, "table_sha256": table_sha256(GEMINI_PRICING)}, r["pricing"]
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256
    assert r["upstream"]["provider_request_id"].startswith("gem-resp-mock-")

    (seen,) = mocks.primary.for_corr(corr)
    assert_gemini_seen(seen, method)
    assert seen["path"].endswith("?alt=sse") == stream, seen["path"]


def test_gemini_count_tokens_and_embeddings(gw: Gateway, mocks: Mocks) -> None:
    """countTokens costs one request and no tokens; a batch of embeddings goes
    to batchEmbedContents with the path's model, priced at the estimate (the
    Gemini API reports no usage for embeddings)."""
    client = gw.gemini()
    corr = new_corr()
    counted = client.models.count_tokens(model=GEMINI_MODEL, contents=prompt(f"Count me. {corr}"))
    assert counted.total_tokens == 42
    r = gw.receipt(gemini_receipt_id(counted))
    assert r["verdict"]["decision"] == "allow" and r["route"] == "/{version}/models/{model}:countTokens"
    assert r.get("usage") is None and r["cost_micro_usd"] == 0
    (seen,) = mocks.primary.for_corr(corr)
    assert_gemini_seen(seen, "countTokens")

    corr = new_corr()
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=[f"first {corr}", "second"],
                                           config=genai_types.EmbedContentConfig(output_dimensionality=8))
    assert [len(e.values) for e in embedded.embeddings] == [8, 8]
    assert embedded.embeddings[0].values != embedded.embeddings[1].values
    r = gw.receipt(gemini_receipt_id(embedded))
    assert r["verdict"]["decision"] == "allow" and r["route"] == "/{version}/models/{model}:batchEmbedContents"
    assert r["model_requested"] == "gemini-embedding-001" and r["provider"] == "gemini-mock"
    (seen,) = mocks.primary.for_corr(corr)
    assert_gemini_seen(seen, "batchEmbedContents", "gemini-embedding-001")
    assert seen["model"] is None, "a batch names its models per request"


def test_gemini_refusals_are_google_errors_with_receipts(gw: Gateway, mocks: Mocks) -> None:
    """A model outside the policy, a secret in the prompt and a non-SSE stream
    are refused in Google's error format (the SDK raises its ClientError),
    with a receipt, and nothing reaches the provider."""
    client = gw.gemini()
    corr = new_corr()
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model="gemini-blocked", contents=prompt(f"Hi. {corr}"))
    assert (exc.value.code, exc.value.status) == (403, "PERMISSION_DENIED")
    assert "not allowed" in exc.value.message
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert (r["api"], r["model_requested"]) == ("gemini", "gemini-blocked")

    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model=GEMINI_MODEL, contents=prompt(f"My key is {AWS_KEY}. {corr}"))
    assert (exc.value.code, exc.value.status) == (403, "PERMISSION_DENIED")
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert r["verdict"]["reason"] == "secret_in_request", r["verdict"]
    assert not mocks.primary.for_corr(corr)

    # A stream framed any other way than SSE is not served; a batch that
    # names another model than its path is refused.
    status, _, body = raw_post(gw, f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent", b"{}",
                               {"x-goog-api-key": GEMINI_CLIENT_KEY})
    assert status == 404 and json.loads(body)["error"]["status"] == "NOT_FOUND"
    smuggled = json.dumps({"requests": [{"model": "models/gemini-blocked", "content": {"parts": [{"text": corr}]}}]})
    status, headers, body = raw_post(gw, "/v1beta/models/gemini-embedding-001:batchEmbedContents", smuggled.encode(),
                                     {"x-goog-api-key": GEMINI_CLIENT_KEY})
    assert status == 400 and json.loads(body)["error"]["status"] == "INVALID_ARGUMENT", body
    r = gw.receipt(headers.get(RID))
    assert r["verdict"]["reason"] == "model_mismatch", r["verdict"]
    assert not mocks.primary.for_corr(corr)


BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
# Converse: inputTokens 900 apart from 300 cache reads and 100 cache writes.
CONVERSE_USAGE = {"input_tokens": 1300, "cached_tokens": 300, "cache_write_5m_tokens": 100, "output_tokens": 120}
CONVERSE_COST = 1324  # 900*0.8 + 300*0.08 + 100*1.0 (1.25 x input) + 120*4 micro-USD


def bedrock_receipt_id(response: dict) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"].get(RID, "")


def assert_bedrock_seen(seen: dict, operation: str, model: str = BEDROCK_MODEL) -> None:
    """The mock got a request signed anew with the provider's key, which
    verified, and nothing of the app's credentials."""
    assert seen["bedrock"] == {"model": model, "operation": operation}, seen["path"]
    assert seen["path"] == f"/model/{model.replace(':', '%3A')}/{operation}", seen["path"]
    assert seen["sigv4"] == "valid", seen["sigv4"]
    assert seen["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={BEDROCK_KEY_ID}/"), seen["headers"]
    blob = json.dumps(seen["headers"])
    assert BEDROCK_CLIENT_KEY_ID not in blob and BEDROCK_CLIENT_SECRET not in blob


def converse_messages(corr: str) -> list[dict]:
    return [{"role": "user", "content": [{"text": prompt(f"Say hello. {corr}")}]}]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "eventstream"])
def test_bedrock_converse_through_the_gateway(gw: Gateway, mocks: Mocks, pki: Pki, stream: bool) -> None:
    """boto3's bedrock-runtime client, pointed at the sidecar: the gateway
    drops the app's SigV4 signature, re-signs with the provider's key (which
    the mock verifies with botocore's signer) and reads usage from the answer
    or from the event stream's metadata event."""
    corr = new_corr()
    client = gw.bedrock()
    if stream:
        response = client.converse_stream(modelId=BEDROCK_MODEL, messages=converse_messages(corr))
        events = list(response["stream"])
        text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
        assert text == STREAM_TEXT
        usage = next(e["metadata"]["usage"] for e in events if "metadata" in e)
    else:
        response = client.converse(modelId=BEDROCK_MODEL, messages=converse_messages(corr))
        assert response["output"]["message"]["content"][0]["text"] == COMPLETION_TEXT
        usage = response["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (900, 120)
    r = gw.receipt(bedrock_receipt_id(response))
    assert r["verdict"]["decision"] == "allow", r["verdict"]
    assert (r["api"], r["provider"], r["model_requested"], r["lane"]) == ("bedrock", "bedrock-mock", BEDROCK_MODEL, "live")
    operation = "converse-stream" if stream else "converse"
    assert r["route"] == f"/model/{{modelId}}/{operation}"
    assert r["usage"] == CONVERSE_USAGE, r["usage"]
    assert r["cost_micro_usd"] == CONVERSE_COST
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256
    assert r["upstream"]["provider_request_id"] == response["ResponseMetadata"]["RequestId"]
    (seen,) = mocks.primary.for_corr(corr)
    assert_bedrock_seen(seen, operation)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "eventstream"])
def test_bedrock_invoke_model_for_claude(gw: Gateway, mocks: Mocks, stream: bool) -> None:
    """InvokeModel carries Anthropic's own body; its usage is Anthropic's,
    inside base64 chunk events when streamed."""
    corr = new_corr()
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": msgs(f"Say hello. {corr}")})
    client = gw.bedrock()
    if stream:
        response = client.invoke_model_with_response_stream(modelId=BEDROCK_MODEL, body=body)
        events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == STREAM_TEXT
    else:
        response = client.invoke_model(modelId=BEDROCK_MODEL, body=body, contentType="application/json")
        answer = json.loads(response["body"].read())
        assert answer["content"][0]["text"] == COMPLETION_TEXT
    r = gw.receipt(bedrock_receipt_id(response))
    assert r["verdict"]["decision"] == "allow", r["verdict"]
    assert r["usage"] == CLAUDE_USAGE and r["cost_micro_usd"] == CLAUDE_COST, r["usage"]
    assert r["model_served"] == "claude-3-5-haiku-20241022"
    assert r["upstream"]["provider_request_id"] == response["ResponseMetadata"]["RequestId"], "AWS's id, not the message's"
    (seen,) = mocks.primary.for_corr(corr)
    assert_bedrock_seen(seen, "invoke-with-response-stream" if stream else "invoke")


def test_bedrock_count_tokens(gw: Gateway, mocks: Mocks) -> None:
    """CountTokens of a Converse input costs one request and no tokens, is
    signed anew like every Bedrock call, and an invokeModel input (an opaque
    blob the guards cannot read) is refused before it leaves."""
    client = gw.bedrock()
    corr = new_corr()
    counted = client.count_tokens(modelId=BEDROCK_MODEL, input={"converse": {"messages": converse_messages(corr)}})
    assert counted["inputTokens"] == 42
    r = gw.receipt(bedrock_receipt_id(counted))
    assert r["verdict"]["decision"] == "allow", r["verdict"]
    assert r["route"] == "/model/{modelId}/count-tokens" and r["model_requested"] == BEDROCK_MODEL
    assert r.get("usage") is None and r["cost_micro_usd"] == 0
    (seen,) = mocks.primary.for_corr(corr)
    assert_bedrock_seen(seen, "count-tokens")

    corr = new_corr()
    blob = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": msgs(f"hi {corr}")})
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.count_tokens(modelId=BEDROCK_MODEL, input={"invokeModel": {"body": blob}})
    error = exc.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationException", 400), error
    r = gw.receipt(error["ResponseMetadata"]["HTTPHeaders"].get(RID))
    assert r["verdict"]["reason"] == "unsupported_body", r["verdict"]
    assert not mocks.primary.for_corr(corr)


def test_bedrock_refusals_and_broken_streams_are_receipted(gw: Gateway, mocks: Mocks) -> None:
    """A model outside the policy is refused as Bedrock refuses (boto3 raises
    AccessDeniedException); an exception message or a frame that fails its
    checksum mid-stream ends the stream and its receipt says so."""
    client = gw.bedrock()
    corr = new_corr()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.converse(modelId="anthropic.claude-blocked-v1:0", messages=converse_messages(corr))
    error = exc.value.response
    assert error["Error"]["Code"] == "AccessDeniedException", error
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    r = gw.receipt(error["ResponseMetadata"]["HTTPHeaders"].get(RID))
    assert_refused(r, 403, "deny")
    assert (r["api"], r["model_requested"]) == ("bedrock", "anthropic.claude-blocked-v1:0")
    assert not mocks.primary.for_corr(corr)

    # InvokeModel is metered for Claude bodies only; another family's body
    # (here Titan's) is refused before it leaves.
    corr = new_corr()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.invoke_model(modelId=BEDROCK_MODEL, body=json.dumps({"inputText": f"hi {corr}"}))
    error = exc.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationException", 400), error
    assert "Claude" in error["Error"]["Message"]
    r = gw.receipt(error["ResponseMetadata"]["HTTPHeaders"].get(RID))
    assert r["verdict"]["reason"] == "unsupported_body", r["verdict"]
    assert not mocks.primary.for_corr(corr)

    for model, reason in (("bedrock.throttled-v1:0", "upstream_stream_exception"),
                          ("bedrock.corrupt-v1:0", "upstream_stream_malformed")):
        corr = new_corr()
        response = client.converse_stream(modelId=model, messages=converse_messages(corr))
        with pytest.raises((botocore.exceptions.EventStreamError, botocore.eventstream.ParserError)):
            list(response["stream"])
        r = gw.receipt(bedrock_receipt_id(response))
        assert (r["verdict"]["decision"], r["verdict"]["reason"]) == ("error", reason), r["verdict"]
        (seen,) = mocks.primary.for_corr(corr)
        assert_bedrock_seen(seen, "converse-stream", model)


def web_identity_manifests(pki: Pki, mocks: Mocks) -> list[dict]:
    """A Bedrock provider with no keys: its credentials come from STS for the
    pod's own (projected) ServiceAccount token."""
    from conftest import provider, trust_anchor
    p = provider("bedrock-wi", "bedrock", mocks.primary.base_url,
                 [{"name": BEDROCK_MODEL, "pricing": ANTHROPIC_PRICING}], "mock-ca", "unused")
    del p["spec"]["credentialsRef"]
    p["spec"]["aws"] = {"region": "us-east-1", "webIdentity": {"roleArn": STS_ROLE, "stsURL": f"{mocks.primary.base_url}/"}}
    return [p, trust_anchor("mock-ca", pki.ca_pem), doc("EgressPolicy", "default", {
        "allow": [{"providerRef": "bedrock-wi", "models": ["anthropic.*"]}],
        "guards": {"maxRequestBytes": 65536, "blockSecrets": True},
    })]


def test_bedrock_with_web_identity_stores_no_key(gateways: GatewayFactory, pki: Pki, mocks: Mocks, tmp_path: Path) -> None:
    """With aws.webIdentity the gateway trades its ServiceAccount token with
    STS for temporary credentials and signs with them (session token
    included); with a token STS refuses, requests fail closed, receipted."""
    token_file = tmp_path / "aws-token"
    token_file.write_text(STS_TOKEN + "\n")
    gw = gateways.start("web-identity", web_identity_manifests(pki, mocks),
                        extra_args=["--aws-web-identity-token-file", str(token_file)])
    issued = wait_until(lambda: [r for r in mocks.primary.requests() if r.get("sts", {}).get("issued")], 10, what="an STS exchange")
    exchange = issued[-1]["sts"]
    assert (exchange["role"], exchange["duration"], exchange["token_ok"], exchange["signed"]) == (STS_ROLE, "3600", True, False)
    assert exchange["session"].startswith("tollgate-"), exchange
    corr = new_corr()
    response = gw.bedrock().converse(modelId=BEDROCK_MODEL, messages=converse_messages(corr))
    assert response["output"]["message"]["content"][0]["text"] == COMPLETION_TEXT
    r = gw.receipt(bedrock_receipt_id(response))
    assert (r["verdict"]["decision"], r["provider"]) == ("allow", "bedrock-wi"), r["verdict"]
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["sigv4"] == "valid", seen["sigv4"]
    key_id = exchange["issued"]
    assert seen["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/"), seen["headers"]
    assert "x-amz-security-token" in seen["headers"]
    # Neither the token nor the temporary secret is kept anywhere.
    from mock_upstream import sts_secret
    kept = "".join(f.read_text(errors="replace") for f in [*gw.spool_dir.rglob("*.jsonl"), gw.stderr_path, gw.config_path] if f.is_file())
    assert STS_TOKEN not in kept and sts_secret(STS_TOKEN) not in kept
    assert "temporary credentials obtained" in gw.stderr_path.read_text()

    bad_token = tmp_path / "bad-token"
    bad_token.write_text("eyJ.not-the-right-token.sig")
    bad = gateways.start("web-identity-refused", web_identity_manifests(pki, mocks),
                         extra_args=["--aws-web-identity-token-file", str(bad_token)])
    wait_until(lambda: "workload identity: exchange failed" in bad.stderr_path.read_text(), 10, what="the refused exchange")
    corr = new_corr()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        bad.bedrock().converse(modelId=BEDROCK_MODEL, messages=converse_messages(corr))
    error = exc.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ServiceUnavailableException", 502), error
    r = bad.receipt(error["ResponseMetadata"]["HTTPHeaders"].get(RID))
    assert r["verdict"]["reason"] == "credentials_unavailable", r["verdict"]
    assert not mocks.primary.for_corr(corr), "nothing unsigned or wrongly signed left the gateway"
    assert "InvalidIdentityToken" in bad.stderr_path.read_text()
    assert "not-the-right-token" not in bad.stderr_path.read_text()


VERTEX_PROJECT, VERTEX_LOCATION = "tollgate-prod", "europe-west4"


def vertex_manifests(pki: Pki, mocks: Mocks) -> list[dict]:
    """A Vertex AI provider with no keys: its access token comes from Google's
    STS for the pod's own (projected) ServiceAccount token, then from IAM for
    the service account it impersonates."""
    from conftest import provider, trust_anchor
    base = mocks.primary.base_url
    p = provider("vertex-wi", "vertex", base, [
        {"name": GEMINI_MODEL, "pricing": GEMINI_PRICING},
        {"name": "gemini-blocked", "pricing": GEMINI_PRICING},
    ], "mock-ca", "unused")
    del p["spec"]["credentialsRef"]
    p["spec"]["gcp"] = {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION, "workloadIdentity": {
        "audience": GCP_POOL, "serviceAccount": GCP_SERVICE_ACCOUNT, "stsURL": f"{base}/v1/token", "iamCredentialsURL": base}}
    return [p, trust_anchor("mock-ca", pki.ca_pem), doc("EgressPolicy", "default", {
        "allow": [{"providerRef": "vertex-wi", "models": ["gemini-2.5-*"]}],
        "guards": {"maxRequestBytes": 65536, "blockSecrets": True},
    })]


def test_vertex_with_workload_identity_stores_no_key(gateways: GatewayFactory, pki: Pki, mocks: Mocks, tmp_path: Path) -> None:
    """The Google Gen AI SDK in Vertex AI mode, through a gateway whose Vertex
    provider has no key: the gateway exchanges its ServiceAccount token with
    Google's STS, impersonates the service account with IAM, and calls
    Vertex AI with that token at the provider's project and location. Usage,
    prices and refusals are the Gemini API's; with a token STS refuses,
    requests fail closed, receipted."""
    from mock_upstream import federated_token, google_access_token
    token_file = tmp_path / "gcp-token"
    token_file.write_text(STS_TOKEN + "\n")
    gw = gateways.start("vertex-wi", vertex_manifests(pki, mocks), extra_args=["--gcp-identity-token-file", str(token_file)])
    issued = wait_until(lambda: [r for r in mocks.primary.requests() if r.get("gcp_iam", {}).get("issued")], 10,
                        what="a service account token from IAM")
    assert (issued[-1]["gcp_iam"]["account"], issued[-1]["gcp_iam"]["lifetime"]) == (GCP_SERVICE_ACCOUNT, "3600s")
    exchange = [r for r in mocks.primary.requests() if r.get("gcp_sts", {}).get("token_ok")][-1]["gcp_sts"]
    assert (exchange["audience"], exchange["grant_type"], exchange["subject_token_type"]) == (
        GCP_POOL, "urn:ietf:params:oauth:grant-type:token-exchange", "urn:ietf:params:oauth:token-type:jwt")
    assert exchange["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    sa_token = google_access_token(federated_token(STS_TOKEN))

    client = gw.vertex()
    for stream in (False, True):
        corr = new_corr()
        contents = prompt(f"Say hello. {corr}")
        if stream:
            chunks = list(client.models.generate_content_stream(model=GEMINI_MODEL, contents=contents))
            assert "".join(c.text or "" for c in chunks) == STREAM_TEXT
            receipt_id = gemini_receipt_id(chunks[0])
        else:
            answer = client.models.generate_content(model=GEMINI_MODEL, contents=contents)
            assert answer.text == COMPLETION_TEXT
            receipt_id = gemini_receipt_id(answer)
        r = gw.receipt(receipt_id)
        assert r["verdict"]["decision"] == "allow", r["verdict"]
        assert (r["api"], r["provider"], r["model_requested"], r["model_served"], r["lane"]) == (
            "gemini", "vertex-wi", GEMINI_MODEL, f"{GEMINI_MODEL}-001", "live")
        assert r["usage"] == GEMINI_USAGE and r["cost_micro_usd"] == GEMINI_COST, r["usage"]
        assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256
        (seen,) = mocks.primary.for_corr(corr)
        method = "streamGenerateContent" if stream else "generateContent"
        # The provider's project and location, never the app's.
        assert seen["vertex"] == {"version": "v1beta1", "project": VERTEX_PROJECT, "location": VERTEX_LOCATION,
                                  "model": GEMINI_MODEL, "method": method, "auth": "issued-token"}, seen["path"]
        assert seen["headers"]["authorization"] == f"Bearer {sa_token}"
        assert "x-goog-api-key" not in seen["headers"]
        assert VERTEX_CLIENT_TOKEN not in json.dumps(seen["headers"]) + seen["path"]

    corr = new_corr()
    counted = client.models.count_tokens(model=GEMINI_MODEL, contents=prompt(f"Count me. {corr}"))
    assert counted.total_tokens == 42
    r = gw.receipt(gemini_receipt_id(counted))
    assert r["verdict"]["decision"] == "allow" and r.get("usage") is None and r["cost_micro_usd"] == 0
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["vertex"]["method"] == "countTokens"

    corr = new_corr()
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model="gemini-blocked", contents=prompt(f"Hi. {corr}"))
    assert (exc.value.code, exc.value.status) == (403, "PERMISSION_DENIED")
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert not mocks.primary.for_corr(corr)

    # Neither the ServiceAccount token nor any token issued for it is kept.
    kept = "".join(f.read_text(errors="replace") for f in [*gw.spool_dir.rglob("*.jsonl"), gw.stderr_path, gw.config_path] if f.is_file())
    for secret in (STS_TOKEN, federated_token(STS_TOKEN), sa_token):
        assert secret not in kept
    assert "workload identity: temporary credentials obtained" in gw.stderr_path.read_text()

    bad_token = tmp_path / "bad-gcp-token"
    bad_token.write_text("eyJ.not-the-right-token.sig")
    bad = gateways.start("vertex-wi-refused", vertex_manifests(pki, mocks), extra_args=["--gcp-identity-token-file", str(bad_token)])
    wait_until(lambda: "workload identity: exchange failed" in bad.stderr_path.read_text(), 10, what="the refused exchange")
    corr = new_corr()
    bad_client = bad.vertex()  # held: a dropped client closes its connection pool
    with pytest.raises(genai_errors.ServerError) as exc:
        bad_client.models.generate_content(model=GEMINI_MODEL, contents=prompt(f"Hi. {corr}"))
    assert exc.value.code == 502, exc.value
    r = bad.receipt(exc.value.response.headers.get(RID))
    assert r["verdict"]["reason"] == "credentials_unavailable", r["verdict"]
    assert not mocks.primary.for_corr(corr), "nothing without the provider's token left the gateway"
    log = bad.stderr_path.read_text()
    assert "invalid_grant" in log and "not-the-right-token" not in log


def entra_manifests(pki: Pki, mocks: Mocks) -> list[dict]:
    """An Azure OpenAI provider with no keys: its access token comes from
    Entra ID for the pod's own (projected) ServiceAccount token."""
    from conftest import azure_provider, trust_anchor
    p = azure_provider(mocks)
    p["metadata"]["name"] = "azure-wi"
    del p["spec"]["credentialsRef"]
    p["spec"]["azure"]["workloadIdentity"] = {"tenantID": ENTRA_TENANT, "clientID": ENTRA_CLIENT_ID,
                                              "authorityHost": mocks.primary.base_url}
    return [p, trust_anchor("mock-ca", pki.ca_pem), doc("EgressPolicy", "default", {
        "allow": [{"providerRef": "azure-wi", "models": ["gpt-4o-azure"]}],
        "guards": {"maxRequestBytes": 65536, "blockSecrets": True},
    })]


def test_azure_openai_with_entra_workload_identity_stores_no_key(gateways: GatewayFactory, pki: Pki, mocks: Mocks,
                                                                 tmp_path: Path) -> None:
    """The openai package's Azure client through a gateway whose Azure
    provider has no key: the gateway presents its ServiceAccount token to
    Entra ID as a federated client assertion and calls the deployment with
    the access token (Authorization: Bearer, no api-key); with an assertion
    Entra refuses, requests fail closed, receipted."""
    from mock_upstream import entra_access_token
    token_file = tmp_path / "azure-token"
    token_file.write_text(STS_TOKEN + "\n")
    gw = gateways.start("azure-wi", entra_manifests(pki, mocks), extra_args=["--azure-identity-token-file", str(token_file)])
    grants = wait_until(lambda: [r for r in mocks.primary.requests() if r.get("entra", {}).get("token_ok")], 10,
                        what="an Entra ID grant")
    grant = grants[-1]["entra"]
    assert (grant["tenant"], grant["client_id"], grant["grant_type"], grant["signed"]) == (
        ENTRA_TENANT, ENTRA_CLIENT_ID, "client_credentials", False)
    assert grant["assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert grant["scope"] == "https://cognitiveservices.azure.com/.default"
    corr = new_corr()
    raw = gw.azure().chat.completions.with_raw_response.create(model="gpt-4o-prod", messages=msgs(), user=corr)
    assert raw.parse().choices[0].message.content == COMPLETION_TEXT
    r = gw.receipt(raw.headers.get(RID))
    assert (r["verdict"]["decision"], r["provider"], r["api"]) == ("allow", "azure-wi", "openai"), r["verdict"]
    assert r["usage"] == CHAT_USAGE
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["azure"] == {"deployment": "gpt-4o-prod", "api_version": AZURE_API_VERSION, "auth": "entra-token"}
    assert seen["headers"]["authorization"] == f"Bearer {entra_access_token(STS_TOKEN)}"
    assert "api-key" not in seen["headers"] and AZURE_CLIENT_KEY not in json.dumps(seen["headers"])
    kept = "".join(f.read_text(errors="replace") for f in [*gw.spool_dir.rglob("*.jsonl"), gw.stderr_path, gw.config_path] if f.is_file())
    assert STS_TOKEN not in kept and entra_access_token(STS_TOKEN) not in kept

    bad_token = tmp_path / "bad-azure-token"
    bad_token.write_text("eyJ.not-the-right-token.sig")
    bad = gateways.start("azure-wi-refused", entra_manifests(pki, mocks), extra_args=["--azure-identity-token-file", str(bad_token)])
    wait_until(lambda: "workload identity: exchange failed" in bad.stderr_path.read_text(), 10, what="the refused grant")
    corr = new_corr()
    with pytest.raises(openai.InternalServerError) as exc:
        bad.azure().chat.completions.create(model="gpt-4o-prod", messages=msgs(), user=corr)
    assert exc.value.status_code == 502
    r = bad.receipt(exc.value.response.headers.get(RID))
    assert r["verdict"]["reason"] == "credentials_unavailable", r["verdict"]
    assert not mocks.primary.for_corr(corr), "nothing without the provider's token left the gateway"
    log = bad.stderr_path.read_text()
    assert "invalid_client AADSTS700213" in log and "not-the-right-token" not in log


def test_openai_chat_stream_usage_is_injected_and_stripped(gw: Gateway, mocks: Mocks) -> None:
    """Without stream_options the gateway asks upstream for usage, records it,
    and hides the extra usage chunk from the client."""
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs(), user=corr, stream=True)
    rid = raw.headers.get(RID)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == STREAM_TEXT
    assert all(c.choices for c in chunks), "the injected usage chunk (choices: []) must not reach a client that did not ask for it"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    (seen,) = mocks.primary.for_corr(corr)
    assert seen["stream"] is True
    assert seen["stream_options"] == {"include_usage": True}, "the gateway should ask upstream for usage"
    r = gw.receipt(rid)
    assert r["verdict"]["decision"] == "allow" and r["verdict"]["reason"] == "allowed"
    assert r["usage"] == CHAT_USAGE
    assert r["cost_micro_usd"] == CHAT_COST
    assert r["upstream"]["provider_request_id"] == chunks[0].id


def test_openai_chat_stream_with_include_usage(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=msgs(), user=corr, stream=True, stream_options={"include_usage": True})
    rid = raw.headers.get(RID)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == STREAM_TEXT
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, "a client that asked for usage gets the usage chunk"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1200, 300)
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["stream_options"] == {"include_usage": True}
    r = gw.receipt(rid)
    assert r["usage"] == CHAT_USAGE


def test_openai_stream_receipt_hashes_the_bytes_the_client_got(gw: Gateway) -> None:
    corr = new_corr()
    body = json.dumps({"model": OPENAI_MODEL, "messages": msgs(), "stream": True, "user": corr}).encode()
    status, headers, data = raw_post(gw, "/v1/chat/completions", body)
    assert status == 200, data[:500]
    assert headers.get("content-type", "").startswith("text/event-stream")
    events = [line for line in data.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"choices": []' in e or '"choices":[]' in e for e in events), "stripped usage event leaked"
    r = gw.receipt(headers.get(RID))
    assert r["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert r["response_sha256"] == hashlib.sha256(data).hexdigest(), "the receipt must hash the bytes the client received"
    assert r["response_length"] == len(data)
    assert r["usage"] == CHAT_USAGE


def test_openai_stream_close_delimited_upstream(gw: Gateway, mocks: Mocks) -> None:
    """An upstream SSE answer without chunked encoding, ended by closing the connection."""
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model="close-delimited", messages=msgs(), user=corr, stream=True)
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == STREAM_TEXT
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["reason"] == "allowed" and r["usage"] == CHAT_USAGE
    mocks.primary.wait_for(corr, "stream_complete")


@pytest.mark.parametrize(
    "model, reason",
    [("stall-mid-stream", "upstream_idle_timeout"), ("reset-mid-stream", "upstream_stream_broken")],
)
def test_a_stream_the_provider_breaks_fails_for_the_app_and_is_receipted(gw: Gateway, model: str, reason: str) -> None:
    """Fault: the provider stalls (past the provider's idleMillis, 10 s here) or
    resets the connection after two deltas. The app gets those two deltas and
    then a broken stream, never a clean end; the receipt says what happened."""
    raw = gw.openai().chat.completions.with_raw_response.create(model=model, messages=msgs(), stream=True)
    got = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in raw.parse():
            got.extend(c.delta.content for c in chunk.choices)
    assert got == ["partial ", "answer "]
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["decision"] == "error" and r["verdict"]["reason"] == reason, r["verdict"]
    assert r["response_status"] == 200, "the head had gone out before the fault"
    assert r["response_length"] > 0 and r["usage"] is None
    if model == "stall-mid-stream":
        assert r["latency"]["total_ms"] >= 10_000, r["latency"]


def test_ten_megabytes_of_response_headers_fail_closed_with_a_receipt(gw: Gateway) -> None:
    """Fault: the provider answers with 10 MB of headers. The gateway reads a
    bounded head, refuses the answer (502) and receipts it."""
    with pytest.raises(openai.APIStatusError) as exc:
        gw.openai().chat.completions.create(model="huge-headers", messages=msgs())
    assert exc.value.status_code == 502, exc.value
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert r["verdict"]["decision"] == "error" and r["verdict"]["reason"].startswith("upstream_"), r["verdict"]
    assert r["upstream"] is not None and r["upstream"]["host"] == "localhost"


def test_openai_model_alias_is_rewritten(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model="mini", messages=msgs(), user=corr)
    assert raw.parse().choices[0].message.content == COMPLETION_TEXT
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["model"] == OPENAI_MODEL, "aliases are rewritten to the provider's model name before forwarding"
    r = gw.receipt(raw.headers.get(RID))
    assert r["model_requested"] == "mini" and r["provider"] == "openai-mock"
    assert r["request_sha256"] == hashlib.sha256(raw.http_request.content).hexdigest(), "request_sha256 is of the body as received"


def test_openai_embeddings_base64(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().embeddings.with_raw_response.create(model="text-embedding-3-small", input=[prompt("one"), prompt("two")], user=corr)
    resp = raw.parse()
    assert [d.embedding for d in resp.data] == [[(i + 1) * (j - 3) / 8.0 for j in range(8)] for i in range(2)]
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["path"] == "/v1/embeddings"
    assert seen["encoding_format"] == "base64", "the SDK asks for base64 and the gateway must forward it untouched"
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["decision"] == "allow"
    assert r["usage"]["input_tokens"] == 9 and r["usage"]["output_tokens"] == 0, r["usage"]
    assert r["model_requested"] == "text-embedding-3-small"


def test_openai_responses_plain(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().responses.with_raw_response.create(model=OPENAI_MODEL, input=prompt(), user=corr)
    resp = raw.parse()
    assert resp.output_text == COMPLETION_TEXT
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["path"] == "/v1/responses"
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["reason"] == "allowed" and r["provider"] == "openai-mock"
    assert r["usage"] == RESPONSES_USAGE
    assert r["cost_micro_usd"] == RESPONSES_COST
    assert r["upstream"]["provider_request_id"] == resp.id
    assert r["model_served"] == resp.model


def test_openai_responses_stream(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().responses.with_raw_response.create(model=OPENAI_MODEL, input=prompt(), user=corr, stream=True)
    events = list(raw.parse())
    assert events[-1].type == "response.completed", [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == COMPLETION_TEXT
    assert events[-1].response.usage.input_tokens == 700
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["reason"] == "allowed"
    assert r["usage"] == RESPONSES_USAGE, "usage comes from response.completed"
    assert r["upstream"]["provider_request_id"] == events[-1].response.id


def test_openai_models_list_shows_only_allowed_models(gw: Gateway) -> None:
    ids = [m.id for m in gw.openai().models.list()]
    assert OPENAI_MODEL in ids and "text-embedding-3-small" in ids, ids
    assert "gpt-4o-blocked" not in ids, f"a model the policy does not allow is listed: {ids}"


# =========================================================================== 1. Anthropic


def test_anthropic_messages_plain(gw: Gateway, mocks: Mocks, pki: Pki) -> None:
    corr = new_corr()
    raw = gw.anthropic().messages.with_raw_response.create(model=CLAUDE_MODEL, max_tokens=256, messages=msgs(), metadata={"user_id": corr})
    msg = raw.parse()
    assert msg.content[0].text == COMPLETION_TEXT
    assert msg.id.startswith("msg_mock_")
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (250, 40)
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["decision"] == "allow" and r["verdict"]["reason"] == "allowed", r["verdict"]
    assert r["provider"] == "anthropic-mock" and r["lane"] == "live"
    assert r["model_requested"] == CLAUDE_MODEL and r["model_served"] == msg.model
    assert r["usage"] == CLAUDE_USAGE
    assert r["cost_micro_usd"] == CLAUDE_COST
    assert r["upstream"]["provider_request_id"] == msg.id
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256
    assert r["upstream"]["key_count"] == 1 and r["upstream"]["key_index"] == 0
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"].get("x-api-key") == ANTHROPIC_KEYS["key-a"]
    assert "authorization" not in seen["headers"], f"the client's Authorization reached upstream: {seen['headers'].get('authorization')!r}"
    assert seen["headers"].get("anthropic-version"), "anthropic-version must be forwarded"
    assert raw.headers.get("request-id", "").startswith("req_mock_"), "the provider's request-id header is passed back"


def test_anthropic_messages_stream(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with gw.anthropic().messages.stream(model=CLAUDE_MODEL, max_tokens=256, messages=msgs(), metadata={"user_id": corr}) as stream:
        rid = stream.response.headers.get(RID)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == STREAM_TEXT
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (250, 40)
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["stream"] is True
    r = gw.receipt(rid)
    assert r["verdict"]["decision"] == "allow" and r["verdict"]["reason"] == "allowed"
    assert r["usage"] == CLAUDE_USAGE, "input from message_start, output from message_delta"
    assert r["cost_micro_usd"] == CLAUDE_COST
    assert r["upstream"]["provider_request_id"] == final.id


def test_anthropic_stream_with_stream_true(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.anthropic().messages.with_raw_response.create(model=CLAUDE_MODEL, max_tokens=256, messages=msgs(), metadata={"user_id": corr}, stream=True)
    events = list(raw.parse())
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop", types
    assert "message_delta" in types and "content_block_stop" in types
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == STREAM_TEXT
    assert gw.receipt(raw.headers.get(RID))["usage"] == CLAUDE_USAGE


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_cache_tokens_count_as_input(gw: Gateway, mocks: Mocks, stream: bool) -> None:
    """Anthropic reports cache reads and writes beside input_tokens, not in it;
    the receipt's input_tokens is documented as "prompt tokens, including cached
    ones", so it must add them up."""
    corr = new_corr()
    if stream:
        with gw.anthropic().messages.stream(model="claude-cached", max_tokens=64, messages=msgs(), metadata={"user_id": corr}) as st:
            rid = st.response.headers.get(RID)
            u = st.get_final_message().usage
    else:
        raw = gw.anthropic().messages.with_raw_response.create(model="claude-cached", max_tokens=64, messages=msgs(), metadata={"user_id": corr})
        rid = raw.headers.get(RID)
        u = raw.parse().usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (50, 1000, 100, 20)
    r = gw.receipt(rid)
    assert r["usage"] == {"input_tokens": 1150, "cached_tokens": 1000, "cache_write_5m_tokens": 40,
                          "cache_write_1h_tokens": 60, "output_tokens": 20}, (
        f"receipt usage {r['usage']} from Anthropic usage input=50 cache_read=1000 cache_creation=40+60 output=20")
    # Cache writes at Anthropic's rates when the table names none: 1.25x input
    # for 5 minutes, 2x for an hour.
    assert r["cost_micro_usd"] == 40 + 80 + 40 + 96 + 80, (
        "50 uncached * 0.8 + 1000 read * 0.08 + 40 5m-writes * 1.0 + 60 1h-writes * 1.6 + 20 out * 4")
    assert r["pricing"] == {"long_context": False, "service_tier": "standard", "table_sha256": table_sha256(ANTHROPIC_PRICING)}


def table_sha256(pricing: dict) -> str:
    """SHA-256 of a price table's canonical JSON (RFC 8785; for integers and
    ASCII strings that is sorted keys and no spaces)."""
    return hashlib.sha256(json.dumps(pricing, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_admin_keys_show_each_keys_health_never_the_key(gw: Gateway) -> None:
    status, body, _ = gw.admin_get("/keys")
    assert status == 200, body
    keys = json.loads(body)["keys"]
    openai_keys = [k for k in keys if k["provider"] == "openai-mock"]
    assert [(k["index"], k["state"]) for k in openai_keys] == [(i, "healthy") for i in range(len(OPENAI_KEYS))]
    for value in [*OPENAI_KEYS.values(), *ANTHROPIC_KEYS.values()]:
        assert value not in body
    _, metrics, _ = gw.admin_get("/metrics")
    assert f'tollgate_gateway_provider_keys{{provider="openai-mock",state="healthy"}} {len(OPENAI_KEYS)}' in metrics, metrics


def test_service_tiers_long_context_and_reasoning_are_priced_and_recorded(gw: Gateway) -> None:
    """The tier the provider reports picks its prices; past the long-context
    size the whole request is priced at those; reasoning tokens are counted
    inside the output. The receipt names the table by its hash."""
    client = gw.openai()
    flex = client.chat.completions.with_raw_response.create(model="gpt-tiered", messages=msgs(), service_tier="flex")
    assert flex.parse().service_tier == "flex"
    assert flex.parse().usage.completion_tokens_details.reasoning_tokens == 120
    r = gw.receipt(flex.headers.get(RID))
    assert r["usage"] == {"input_tokens": 1200, "cached_tokens": 200, "output_tokens": 300, "reasoning_tokens": 120}, r["usage"]
    table = table_sha256(TIERED_PRICING)
    assert r["pricing"] == {"long_context": False, "service_tier": "flex", "table_sha256": table}, r["pricing"]
    # flex: 1000 uncached * 0.625 + 200 read * 0.0625 + 300 out * 5, rounded up.
    assert r["cost_micro_usd"] == 2138

    default = client.chat.completions.with_raw_response.create(model="gpt-tiered", messages=msgs())
    r = gw.receipt(default.headers.get(RID))
    # "default" is not a tier of the table: base prices, and 1200 input tokens
    # pass the 1000-token long-context size.
    assert r["pricing"] == {"long_context": True, "service_tier": "default", "table_sha256": table}, r["pricing"]
    assert r["cost_micro_usd"] == 1000 * 2.5 + 200 * 0.25 + 300 * 15


def test_anthropic_count_tokens(gw: Gateway, mocks: Mocks) -> None:
    before = len([r for r in mocks.primary.requests() if r["path"] == "/v1/messages/count_tokens"])
    raw = gw.anthropic().messages.with_raw_response.count_tokens(model=CLAUDE_MODEL, messages=msgs())
    assert raw.parse().input_tokens == 42
    seen = [r for r in mocks.primary.requests() if r["path"] == "/v1/messages/count_tokens"]
    assert len(seen) == before + 1
    assert seen[-1]["headers"].get("x-api-key") == ANTHROPIC_KEYS["key-a"]
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["decision"] == "allow" and r["response_status"] == 200
    assert r["provider"] == "anthropic-mock" and r["lane"] == "live"


def test_anthropic_models_list_shows_only_allowed_models(gw: Gateway) -> None:
    ids = [m.id for m in gw.anthropic().models.list()]
    assert CLAUDE_MODEL in ids, ids
    assert "claude-blocked" not in ids, ids


def test_dry_run_lane_never_calls_upstream(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model="dry-model", messages=msgs(), user=corr)
    resp = raw.parse()
    assert isinstance(resp.choices[0].message.content, str)
    r = gw.receipt(raw.headers.get(RID))
    assert r["lane"] == "dry_run" and r["provider"] == "dry" and r["upstream"] is None, r
    assert all(not m.for_corr(corr) for m in mocks.all())


def test_dry_run_lane_answers_the_gemini_sdk(gw: Gateway, mocks: Mocks) -> None:
    """The dry-run provider speaks the Gemini wire format too, streams
    included, so `kubectl tollgate local` serves Gemini apps offline."""
    client = gw.gemini()
    answer = client.models.generate_content(model="dry-model", contents=prompt("Hello, dry run."))
    assert answer.text.startswith("This is a dry-run response from Tollgate")
    assert answer.usage_metadata.candidates_token_count == 11
    chunks = list(client.models.generate_content_stream(model="dry-model", contents=prompt("Hello, dry run.")))
    assert "".join(c.text or "" for c in chunks) == answer.text
    assert chunks[-1].usage_metadata.candidates_token_count == 11
    for response in (answer, chunks[0]):
        r = gw.receipt(gemini_receipt_id(response))
        assert (r["lane"], r["provider"], r["api"], r["upstream"]) == ("dry_run", "dry", "gemini", None), r
        assert r["usage"]["output_tokens"] == 11


def test_dry_run_lane_answers_boto3_bedrock(gw: Gateway) -> None:
    """The dry-run provider frames Bedrock's event streams too, which boto3
    parses and checksums like the real service's."""
    client = gw.bedrock()
    messages = [{"role": "user", "content": [{"text": prompt("Hello, dry run.")}]}]
    answer = client.converse(modelId="dry-model", messages=messages)
    text = answer["output"]["message"]["content"][0]["text"]
    assert text.startswith("This is a dry-run response from Tollgate")
    streamed = client.converse_stream(modelId="dry-model", messages=messages)
    events = list(streamed["stream"])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == text
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3, "messages": msgs("Hi.")})
    chunks = [json.loads(e["chunk"]["bytes"]) for e in client.invoke_model_with_response_stream(modelId="dry-model", body=body)["body"]]
    assert chunks[-2]["delta"]["stop_reason"] == "max_tokens", chunks[-2]
    for response in (answer, streamed):
        r = gw.receipt(bedrock_receipt_id(response))
        assert (r["lane"], r["provider"], r["api"]) == ("dry_run", "dry", "bedrock"), r
        assert r["usage"]["output_tokens"] == 11, r["usage"]


# =========================================================================== 2. credentials


def test_client_credentials_and_foreign_headers_never_reach_upstream(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    client = gw.openai()
    client.chat.completions.create(model=OPENAI_MODEL, messages=msgs(), user=corr, extra_headers={
        "x-api-key": OPENAI_CLIENT_KEY, "Cookie": "session=client-cookie", "Proxy-Authorization": "Basic Y2xpZW50OnB3",
        "X-Internal-Secret": "internal-value"})
    (seen,) = mocks.primary.for_corr(corr)
    h = seen["headers"]
    assert h.get("authorization") in {f"Bearer {k}" for k in OPENAI_KEYS.values()}, h.get("authorization")
    for name in ("x-api-key", "cookie", "proxy-authorization", "x-internal-secret"):
        assert name not in h, f"{name} was forwarded upstream: {h[name]!r}"


def test_upstream_only_ever_saw_injected_keys(gw: Gateway, mocks: Mocks) -> None:
    """Every request any mock received so far carried the provider key, never the client's."""
    records = [r for m in mocks.all() for r in m.requests()]
    assert len(records) >= 10, f"expected the earlier tests to have reached upstream, saw {len(records)}"
    for rec in records:
        h = rec["headers"]
        blob = json.dumps(h)
        for client_key in (OPENAI_CLIENT_KEY, ANTHROPIC_CLIENT_KEY, AZURE_CLIENT_KEY, GEMINI_CLIENT_KEY, VERTEX_CLIENT_TOKEN):
            assert client_key not in blob + rec["path"], f"client key upstream: {rec['path']} {h}"
        if rec.get("sts") or rec.get("gcp_sts") or rec.get("entra"):
            # The token is the proof: no credential of any kind goes along.
            assert "authorization" not in h and "x-api-key" not in h and "x-goog-api-key" not in h, h
        elif rec.get("gcp_iam"):
            # The federated token STS issued, and nothing else.
            assert h["authorization"].startswith("Bearer fed."), h
        elif rec.get("vertex"):
            # A token the mock's IAM issued for the impersonated account.
            assert rec["vertex"]["auth"] == "issued-token" and h["authorization"].startswith("Bearer ya29.mock"), h
            assert "x-goog-api-key" not in h, h
        elif rec.get("bedrock"):
            assert rec["sigv4"] == "valid", rec
            # The provider's key, or temporary credentials STS issued (web identity).
            assert re.match(rf"AWS4-HMAC-SHA256 Credential=({BEDROCK_KEY_ID}|ASIAMOCK\d+)/", h["authorization"]), h
            assert BEDROCK_CLIENT_KEY_ID not in blob and BEDROCK_CLIENT_SECRET not in blob, h
        elif rec.get("gemini"):
            assert h.get("x-goog-api-key") in GEMINI_KEYS.values(), h
            assert "authorization" not in h and "x-api-key" not in h, h
        elif rec["path"].startswith("/v1/messages"):
            assert h.get("x-api-key") in ANTHROPIC_KEYS.values(), h
            assert "authorization" not in h, h
        elif rec.get("azure", {}).get("auth") == "entra-token":
            # An access token the mock's Entra ID issued, and no key.
            assert h["authorization"].startswith("Bearer eyJ0eXAiOiJKV1QifQ.entra"), h
            assert "api-key" not in h, h
        elif rec["path"].startswith("/openai/"):
            assert h.get("api-key") in AZURE_KEYS.values(), h
            assert "authorization" not in h and "x-api-key" not in h, h
        else:
            assert h.get("authorization") in {f"Bearer {k}" for k in OPENAI_KEYS.values()}, h
            assert "x-api-key" not in h, h


# =========================================================================== 4. TLS


def test_spki_pin_match_is_accepted(gw: Gateway, pki: Pki, mocks: Mocks) -> None:
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-pinned", messages=msgs(), user=corr)
    assert raw.parse().choices[0].message.content == COMPLETION_TEXT
    r = gw.receipt(raw.headers.get(RID))
    assert r["provider"] == "openai-pinned"
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256


@pytest.mark.parametrize("model,provider", [("gpt-badpin", "openai-badpin"), ("gpt-wrongca", "openai-wrongca")])
def test_untrusted_upstream_certificate_is_refused(gw: Gateway, mocks: Mocks, model: str, provider: str) -> None:
    """A wrong SPKI pin, or a CA bundle that does not hold the mock's CA: 502, fail closed."""
    corr = new_corr()
    with pytest.raises(openai.APIStatusError) as exc:
        gw.openai().chat.completions.create(model=model, messages=msgs(), user=corr)
    assert_openai_error(exc.value.response, 502)
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 502, "error")
    assert r["provider"] == provider
    assert "tls" in r["verdict"]["reason"], r["verdict"]
    assert not mocks.primary.for_corr(corr), "no HTTP request may be sent over an untrusted connection"


def test_upstream_redirect_is_refused_not_followed(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(openai.APIStatusError) as exc:
        gw.openai().chat.completions.create(model="redirect-me", messages=msgs(), user=corr)
    resp = exc.value.response
    assert_openai_error(resp, 502)
    assert "location" not in {k.lower() for k in resp.headers}, "the redirect target must not leak to the client"
    r = gw.receipt(resp.headers.get(RID))
    assert_refused(r, 502, "error")
    assert "redirect" in r["verdict"]["reason"], r["verdict"]
    (seen,) = mocks.primary.for_corr(corr)
    assert seen["status"] == 302
    time.sleep(0.5)
    assert mocks.redirect_target.records() == [], "the gateway followed the redirect"


# =========================================================================== 5. refusals in the API's own style


def test_413_request_over_max_bytes_openai(gw: Gateway, mocks: Mocks) -> None:
    big = prompt("lorem ipsum dolor sit amet " * 2600)  # ~70 KB > maxRequestBytes 65536
    with pytest.raises(openai.APIStatusError) as exc:
        gw.openai().chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": big}])
    assert exc.value.status_code == 413
    assert_openai_error(exc.value.response, 413)
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 413, "deny")
    assert r["upstream"] is None
    assert all(rec.get("body_length", 0) < 65536 for rec in mocks.primary.requests())


def test_413_request_over_max_bytes_anthropic(gw: Gateway) -> None:
    big = prompt("lorem ipsum dolor sit amet " * 2600)
    with pytest.raises(anthropic.APIStatusError) as exc:
        gw.anthropic().messages.create(model=CLAUDE_MODEL, max_tokens=16, messages=[{"role": "user", "content": big}])
    assert exc.value.status_code == 413
    assert_anthropic_error(exc.value.response, 413, "request_too_large")
    assert_refused(gw.receipt(exc.value.response.headers.get(RID)), 413, "deny")


def test_the_apps_x_request_id_is_the_receipts_correlation_id(gw: Gateway, mocks: Mocks) -> None:
    # Not built from new_corr(): the end-user marker must never reach a receipt.
    app_id = f"app-{time.monotonic_ns()}"
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=msgs(), extra_headers={"X-Request-Id": app_id}
    )
    assert gw.receipt(raw.headers.get(RID))["correlation_id"] == app_id
    msg = gw.anthropic().messages.with_raw_response.create(
        model=CLAUDE_MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "trace:42/b"}
    )
    assert gw.receipt(msg.headers.get(RID))["correlation_id"] == "trace:42/b"
    # Not an identifier: refused with a clear error (and receipted), never dropped.
    with pytest.raises(openai.BadRequestError) as exc:
        gw.openai().chat.completions.create(model=OPENAI_MODEL, messages=msgs(), extra_headers={"X-Request-Id": "two words"})
    assert "x-request-id" in exc.value.message
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert r["verdict"]["reason"] == "invalid_request_id" and "correlation_id" not in r, r
    # Without the header the field is absent, as in older receipts.
    plain = gw.openai().chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs())
    assert "correlation_id" not in gw.receipt(plain.headers.get(RID))


def test_400_malformed_json_openai(gw: Gateway) -> None:
    status, headers, body = raw_post(gw, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [')
    assert_openai_error(RawResp(status, headers, body), 400)
    r = gw.receipt(headers.get(RID))
    assert_refused(r, 400, "deny")
    assert r["upstream"] is None


def test_400_malformed_json_anthropic(gw: Gateway) -> None:
    status, headers, body = raw_post(gw, "/v1/messages", b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [}',
                                     headers={"anthropic-version": "2023-06-01", "x-api-key": ANTHROPIC_CLIENT_KEY})
    assert_anthropic_error(RawResp(status, headers, body), 400, "invalid_request_error")
    assert_refused(gw.receipt(headers.get(RID)), 400, "deny")


@pytest.mark.parametrize("model", ["gpt-4o-blocked", "gpt-does-not-exist"])
def test_403_model_not_allowed_openai(gw: Gateway, mocks: Mocks, model: str) -> None:
    corr = new_corr()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        gw.openai().chat.completions.create(model=model, messages=msgs(), user=corr)
    assert_openai_error(exc.value.response, 403)
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert r["model_requested"] == model
    assert not mocks.primary.for_corr(corr)


def test_403_model_not_allowed_anthropic(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        gw.anthropic().messages.create(model="claude-blocked", max_tokens=16, messages=msgs(), metadata={"user_id": corr})
    assert_anthropic_error(exc.value.response, 403, "permission_error")
    assert_refused(gw.receipt(exc.value.response.headers.get(RID)), 403, "deny")
    assert not mocks.primary.for_corr(corr)


def test_403_openai_model_over_anthropic_api(gw: Gateway, mocks: Mocks) -> None:
    """A model of the wrong API style is not routable: the Messages API cannot reach an OpenAI model."""
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        gw.anthropic().messages.create(model=OPENAI_MODEL, max_tokens=16, messages=msgs())
    assert_anthropic_error(exc.value.response, 403, "permission_error")


def test_404_unknown_path_openai(gw: Gateway) -> None:
    status, headers, body = raw_post(gw, "/v1/files", b"{}")
    assert_openai_error(RawResp(status, headers, body), 404)
    with pytest.raises(openai.NotFoundError) as exc:
        gw.openai().files.list()
    assert_openai_error(exc.value.response, 404)


def test_404_unknown_path_anthropic(gw: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        gw.anthropic().messages.batches.list()
    assert_anthropic_error(exc.value.response, 404, "not_found_error")


def test_receipt_ids_mark_exactly_the_responses_that_have_receipts(gw: Gateway) -> None:
    """Every API decision carries x-tollgate-receipt-id and has a receipt, the model
    listing included. A path that is not a model API is refused with 404 before any
    decision (docs/gateway.md), so it has neither."""
    status, headers, _ = raw_post(gw, "/v1/models", b"", method="GET")
    assert status == 200
    r = gw.receipt(headers.get(RID))
    assert r["verdict"]["reason"] == "models_listed", r["verdict"]
    for method, path in [("POST", "/v1/files"), ("POST", "/v2/chat/completions"), ("GET", "/v1/chat/completions")]:
        status, headers, _ = raw_post(gw, path, b"{}" if method == "POST" else b"", method=method)
        assert status == 404, f"{method} {path} -> {status}"
        assert not headers.get(RID), f"{method} {path} claims a receipt it does not have"


def test_403_secret_in_prompt_openai(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        gw.openai().chat.completions.create(model=OPENAI_MODEL, messages=msgs("Please debug this key:\n" + PEM_SECRET), user=corr)
    assert_openai_error(exc.value.response, 403)
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert r["verdict"]["guards"], f"the guard that fired should be named: {r['verdict']}"
    assert not mocks.primary.for_corr(corr), "a request carrying a private key reached upstream"


def test_403_secret_in_prompt_anthropic(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        gw.anthropic().messages.create(model=CLAUDE_MODEL, max_tokens=16, messages=msgs(f"my aws key is {AWS_KEY} ok?"), metadata={"user_id": corr})
    assert_anthropic_error(exc.value.response, 403, "permission_error")
    r = gw.receipt(exc.value.response.headers.get(RID))
    assert_refused(r, 403, "deny")
    assert r["verdict"]["guards"], r["verdict"]
    assert not mocks.primary.for_corr(corr)


# =========================================================================== 9. upstream 429 and failover


def test_upstream_429_without_alternative_is_passed_back(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    with pytest.raises(openai.RateLimitError) as exc:
        gw.openai().chat.completions.create(model="fail-429", messages=msgs(), user=corr)
    resp = exc.value.response
    assert resp.status_code == 429
    assert resp.headers.get("retry-after") == "7", "the provider's Retry-After must reach the client"
    assert_openai_error(resp, 429)
    r = gw.receipt(resp.headers.get(RID))
    assert r["response_status"] == 429 and r["verdict"]["decision"] != "allow", r["verdict"]
    assert "429" in r["verdict"]["reason"], r["verdict"]
    assert len(mocks.primary.for_corr(corr)) == 1, "no retry against the same provider"


@pytest.mark.parametrize("model,first_status", [("gpt-failover", 429), ("gpt-failover-503", 503), ("gpt-failover-connect", None)],
                         ids=["upstream-429", "upstream-503", "connect-refused"])
def test_failover_answers_from_backup(gw: Gateway, mocks: Mocks, pki: Pki, model: str, first_status: int | None) -> None:
    """failover: true, two allowed providers for the model; the first one fails
    (429, 5xx, or refuses the connection) and the SDK gets the backup's 200."""
    corr = new_corr()
    raw = gw.openai().chat.completions.with_raw_response.create(model=model, messages=msgs(), user=corr)
    resp = raw.parse()
    assert raw.http_response.status_code == 200
    assert resp.choices[0].message.content == f"{COMPLETION_MARKER} answer from backup"
    assert resp.system_fingerprint == "fp_backup"
    if first_status is not None:
        (flaky,) = mocks.flaky.for_corr(corr)
        assert flaky["status"] == first_status
    (backup,) = mocks.backup.for_corr(corr)
    assert backup["status"] == 200 and backup["headers"].get("authorization", "").startswith("Bearer sk-upstream-INJECTED-KEY")
    r = gw.receipt(raw.headers.get(RID))
    assert r["provider"] == "openai-backup" and r["verdict"]["decision"] == "allow", r
    assert r["usage"] == CHAT_USAGE
    assert r["upstream"]["tls_cert_sha256"] == pki.leaf_der_sha256


# =========================================================================== 6. client disconnect


def test_stream_client_disconnect_cancels_upstream(gw: Gateway, mocks: Mocks) -> None:
    corr = new_corr()
    body = json.dumps({"model": "slow-stream", "stream": True, "messages": msgs(), "user": corr}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.api_port), timeout=10)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {OPENAI_CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        buf = b""
        deadline = time.monotonic() + 10
        while (b"\r\n\r\n" not in buf or buf.split(b"\r\n\r\n", 1)[1].count(b"data: ") < 3) and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert rest.count(b"data: ") >= 3, f"expected 3 events before disconnecting, got {rest[:300]!r}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.decode().split("\r\n")[1:])}
    rid = headers.get(RID)

    cancelled = mocks.primary.wait_for(corr, "cancelled", timeout=5)
    assert cancelled["model"] == "slow-stream"
    assert not mocks.primary.for_corr(corr, "stream_complete"), "upstream streamed to the end although the client left"
    r = gw.receipt(rid)
    assert r["verdict"]["reason"] == "client_disconnected", r["verdict"]
    assert r["response_status"] == 200 and r["response_length"] > 0
    assert r["upstream"]["tls_cert_sha256"], r["upstream"]


# =========================================================================== streaming pass-through


def test_openai_stream_is_passed_through_not_buffered(gw: Gateway) -> None:
    """60 deltas produced 50 ms apart must reach the client spread out, as produced."""
    raw = gw.openai().chat.completions.with_raw_response.create(model="slow-stream", messages=msgs(), stream=True)
    arrivals = []
    text = ""
    for c in raw.parse():
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += c.choices[0].delta.content
    assert text == "".join(f"d{i} " for i in range(60))
    assert arrivals[-1] - arrivals[0] >= 2.0, f"deltas arrived within {arrivals[-1] - arrivals[0]:.2f}s: the stream was buffered"
    r = gw.receipt(raw.headers.get(RID))
    assert r["verdict"]["reason"] == "allowed" and r["usage"] == CHAT_USAGE
    assert r["latency"]["first_byte_ms"] < 1500 <= r["latency"]["total_ms"], r["latency"]


def test_anthropic_stream_is_passed_through_not_buffered(gw: Gateway) -> None:
    arrivals = []
    with gw.anthropic().messages.stream(model="slow-stream", max_tokens=128, messages=msgs()) as stream:
        rid = stream.response.headers.get(RID)
        text = ""
        for piece in stream.text_stream:
            arrivals.append(time.monotonic())
            text += piece
    assert text == "".join(f"d{i} " for i in range(60))
    assert arrivals[-1] - arrivals[0] >= 2.0, f"deltas arrived within {arrivals[-1] - arrivals[0]:.2f}s: the stream was buffered"
    assert gw.receipt(rid)["usage"] == CLAUDE_USAGE


# =========================================================================== metrics


def test_metrics_count_requests(gw: Gateway) -> None:
    status, text, headers = gw.admin_get("/metrics")
    assert status == 200
    lines = [line for line in text.splitlines() if line.startswith("tollgate_gateway_requests") and not line.startswith("#")]
    allowed_chat = [line for line in lines if 'endpoint="chat_completions"' in line and 'decision="allow"' in line]
    assert allowed_chat, f"no allowed chat_completions counter in /metrics:\n{text[:2000]}"
    assert sum(float(line.rsplit(" ", 1)[1]) for line in allowed_chat) >= 5
    assert any('decision="deny"' in line for line in lines), lines
    for secret in (PROMPT_MARKER, CORR_PREFIX):
        assert secret not in text, f"/metrics carries request text: {secret}"


# GenAI metric labels the gateway may emit: all bounded (see gateway/src/genai_metrics.rs).
GENAI_LABELS = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "server_address", "server_port",
                "error_type", "gen_ai_token_type", "gen_ai_token_modality", "le"}
# A model no config lists: it must never become a label (it is kept in receipts as requested).
UNLISTED_MODEL = "unlisted-model-q7x2"
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for every sample line of a Prometheus/OpenMetrics text."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        out.append((name, dict(LABEL_RE.findall(labels)), float(value)))
    return out


def metric_value(samples: list, name: str, **labels: str) -> float | None:
    """The one sample named `name` whose labels are exactly `labels` (None: no such sample)."""
    found = [v for n, ls, v in samples if n == name and ls == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def genai_traffic(g: Gateway) -> dict[str, dict]:
    """A chat call, a streamed chat, a streamed Anthropic message, an unlisted model and a dry-run call; their receipts."""
    client = g.openai()
    rids = {}
    raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs(), user=new_corr())
    raw.parse()
    rids["chat"] = raw.headers.get(RID)
    raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs(), stream=True, user=new_corr())
    chunks = list(raw.parse())
    assert chunks, "no chunks streamed"
    rids["chat_stream"] = raw.headers.get(RID)
    with g.anthropic().messages.stream(model=CLAUDE_MODEL, max_tokens=64, messages=msgs()) as stream:
        rids["messages_stream"] = stream.response.headers.get(RID)
        "".join(stream.text_stream)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model=UNLISTED_MODEL, messages=msgs())
    rids["unlisted"] = exc.value.response.headers.get(RID)
    raw = client.chat.completions.with_raw_response.create(model="dry-model", messages=msgs())
    raw.parse()
    rids["dry"] = raw.headers.get(RID)
    return {what: g.receipt(rid) for what, rid in rids.items()}


def test_genai_metrics_follow_the_v1_41_conventions(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    g = gateways.start("genai", main_manifests(pki, mocks))
    receipts = genai_traffic(g)
    status, text, _ = g.admin_get("/metrics")
    assert status == 200
    samples = metric_samples(text)
    host = mocks.primary.base_url.split("://", 1)[1].split("/", 1)[0]
    address, port = host.rsplit(":", 1)
    openai_labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": OPENAI_MODEL,
                     "server_address": address, "server_port": port}
    chats = [receipts["chat"], receipts["chat_stream"]]
    for token_type, field in (("input", "input_tokens"), ("output", "output_tokens")):
        labels = {**openai_labels, "gen_ai_token_type": token_type}
        assert metric_value(samples, "gen_ai_client_token_usage_sum", **labels) == sum(r["usage"][field] for r in chats), (labels, text)
        assert metric_value(samples, "gen_ai_client_token_usage_count", **labels) == 2
    assert metric_value(samples, "gen_ai_client_operation_duration_seconds_count", **openai_labels) == 2
    # Only the streamed call is timed by chunks.
    assert metric_value(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **openai_labels) == 1
    assert metric_value(samples, "gen_ai_client_operation_time_per_output_chunk_seconds_count", **openai_labels) >= 1
    claude = {**openai_labels, "gen_ai_provider_name": "anthropic", "gen_ai_request_model": CLAUDE_MODEL}
    assert metric_value(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **claude) == 1
    assert metric_value(samples, "gen_ai_client_token_usage_sum", **claude, gen_ai_token_type="input") == receipts["messages_stream"]["usage"]["input_tokens"]
    # A model the config does not list is `_OTHER`, with the receipt's reason as the error.
    refused = receipts["unlisted"]["verdict"]["reason"]
    unlisted = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "_OTHER", "error_type": refused}
    assert metric_value(samples, "gen_ai_client_operation_duration_seconds_count", **unlisted) == 1, text
    # The dry-run lane is no provider of the conventions, and has no server.
    dry = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "tollgate.dry_run", "gen_ai_request_model": "dry-model"}
    assert metric_value(samples, "gen_ai_client_operation_duration_seconds_count", **dry) == 1, text
    for name, labels, _ in samples:
        if name.startswith("gen_ai_"):
            assert set(labels) <= GENAI_LABELS, (name, labels)
    for secret in (PROMPT_MARKER, CORR_PREFIX, COMPLETION_MARKER, UNLISTED_MODEL):
        assert secret not in text, f"/metrics carries request or response text: {secret}"
    assert "gen_ai_client_inference" not in text


def test_genai_metrics_latest_conventions_on_opt_in(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    g = gateways.start("genai-latest", main_manifests(pki, mocks), env={"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"})
    receipts = genai_traffic(g)
    status, text, _ = g.admin_get("/metrics")
    assert status == 200
    samples = metric_samples(text)
    counted = [r for r in receipts.values() if r.get("usage")]
    for counter, field in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"), ("cache_read_input_tokens", "cached_tokens")):
        total = sum(v for n, _, v in samples if n == f"gen_ai_client_inference_usage_{counter}_total")
        assert total == sum(r["usage"][field] for r in counted), (counter, text)
    # Every operation is counted, failed ones included (with 0 tokens).
    unlisted = [ls for n, ls, _ in samples if n == "gen_ai_client_inference_usage_input_tokens_total" and ls.get("gen_ai_request_model") == "_OTHER"]
    assert unlisted and all(ls["gen_ai_token_modality"] == "unknown" for ls in unlisted), text
    assert sum(v for n, _, v in samples if n == "gen_ai_client_inference_time_to_first_chunk_seconds_count") == 2
    assert any(n == "gen_ai_client_inference_duration_seconds_count" for n, _, _ in samples)
    assert not any(n.startswith(("gen_ai_client_operation_", "gen_ai_client_token_usage")) for n, _, _ in samples), text


def test_the_grafana_dashboard_queries_only_metrics_the_gateway_serves(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    """The chart's dashboard for these metrics names no series /metrics lacks (a rename would break it silently)."""
    dashboard_path = Path(__file__).resolve().parents[3] / "charts" / "tollgate" / "dashboards" / "tollgate-genai.json"
    dashboard = json.loads(dashboard_path.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 6, exprs
    g = gateways.start("grafana", main_manifests(pki, mocks))
    genai_traffic(g)
    served: set[str] = set()
    served_labels: set[str] = set()
    for n, labels, _ in metric_samples(g.admin_get("/metrics")[1]):
        served.add(n)
        served_labels |= set(labels)
    assert "gen_ai_client_token_usage_sum" in served
    queried = {m for e in exprs for m in re.findall(r"\b((?:gen_ai|tollgate_gateway)_[a-z0-9_]+)\{", e)}
    assert queried, exprs
    missing = sorted(queried - served)
    assert not missing, f"the dashboard queries series the gateway does not serve: {missing}"
    # Grouping labels: the gateway's own, or the target labels the scrape adds.
    grouped = {label.strip() for e in exprs for by in re.findall(r"by \(([^)]*)\)", e) for label in by.split(",")}
    unknown = sorted(grouped - served_labels - {"namespace", "pod"})
    assert not unknown, f"the dashboard groups by labels the gateway does not set: {unknown}"


# =========================================================================== compile


def test_compile_rejects_a_broken_reference(binaries: dict, tmp_path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "p.yaml").write_text(json.dumps(doc("EgressPolicy", "default", {"allow": [{"providerRef": "nope", "models": ["*"]}]})))
    proc = run([str(binaries["cli"]), "compile", "--manifests", str(tmp_path / "m"), "--namespace", "demo", "-o", str(tmp_path / "c.json")])
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "nope" in proc.stderr, proc.stderr


# =========================================================================== 7. quota


def quota_manifests(pki: Pki, mocks: Mocks) -> list[dict]:
    return [
        *base_providers(pki, mocks),
        doc("EgressPolicy", "default", {"allow": [
            {"providerRef": "openai-mock", "models": ["*"]},
            {"providerRef": "anthropic-mock", "models": ["*"]},
        ]}),
        doc("EgressQuota", "q", {"limits": [{"name": "burst", "window": "minute", "requests": 3}]}),
    ]


def test_quota_fourth_request_in_a_minute_is_429(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    qgw = gateways.start("quota", quota_manifests(pki, mocks))
    # A calendar-minute window: keep all four calls inside one minute.
    into_minute = time.time() % 60
    if into_minute > 40:
        time.sleep(60 - into_minute + 0.5)
    client = qgw.openai()
    corrs = [new_corr() for _ in range(4)]
    for corr in corrs[:3]:
        raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs(), user=corr)
        raw.parse()
        r = qgw.receipt(raw.headers.get(RID))
        assert r["verdict"]["decision"] == "allow"
        assert r["quota"] is not None and r["quota"]["requests"] == 1, r["quota"]
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=OPENAI_MODEL, messages=msgs(), user=corrs[3])
    resp = exc.value.response
    assert_openai_error(resp, 429)
    retry_after = resp.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit(), f"Retry-After must be a number of seconds: {retry_after!r}"
    assert 1 <= int(retry_after) <= 60, retry_after
    r = qgw.receipt(resp.headers.get(RID))
    assert_refused(r, 429, "deny")
    assert r["verdict"]["reason"] == "quota_exceeded", r["verdict"]
    assert r["upstream"] is None
    assert [len(mocks.primary.for_corr(c)) for c in corrs] == [1, 1, 1, 0]
    # The same budget refuses the Messages API, in its own error style.
    with pytest.raises(anthropic.RateLimitError) as aexc:
        qgw.anthropic().messages.create(model=CLAUDE_MODEL, max_tokens=16, messages=msgs())
    assert_anthropic_error(aexc.value.response, 429, "rate_limit_error")
    assert aexc.value.response.headers.get("retry-after", "").isdigit()


def test_shadow_quota_serves_and_records_the_would_deny(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    docs = [*base_providers(pki, mocks),
            doc("EgressPolicy", "default", {"allow": [{"providerRef": "openai-mock", "models": ["*"]}]}),
            doc("EgressQuota", "shadow", {"enforcement": "shadow", "limits": [{"name": "one", "rolling": "1h", "requests": 1}]})]
    sgw = gateways.start("shadow-quota", docs)
    client = sgw.openai()
    verdicts = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs())
        assert raw.parse().choices[0].message.content == COMPLETION_TEXT, "shadow enforcement must let requests through"
        verdicts.append(sgw.receipt(raw.headers.get(RID))["verdict"])
    passed = lambda guard: {"detail": None, "guard": guard, "outcome": "passed"}  # noqa: E731
    assert verdicts[0] == {"decision": "allow", "reason": "allowed", "guards": [],
                           "checks": [passed("secret_scan"), passed("model_allowlist"), passed("quota")]}, verdicts[0]
    for v in verdicts[1:]:
        assert v["decision"] == "allow" and any("quota" in g for g in v["guards"]), f"over-budget request should record a would-deny: {v}"
        assert {"detail": "shadow", "guard": "quota", "outcome": "audit_only"} in v["checks"], v


# =========================================================================== 8. hot reload


def reload_manifests(pki: Pki, mocks: Mocks, tightened: bool) -> list[dict]:
    allow: dict[str, Any] = {"providerRef": "openai-mock", "models": ["gpt-4o-mini", "slow-stream"] + ([] if tightened else ["gpt-4o-blocked"])}
    if tightened:
        allow["maxTokens"] = 64
    return [*base_providers(pki, mocks), doc("EgressPolicy", "default", {"allow": [allow]})]


def test_hot_reload_keeps_streams_and_applies_new_policy(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    rgw = gateways.start("reload", reload_manifests(pki, mocks, tightened=False))
    client = rgw.openai()
    old_hash = rgw.initial_policy
    assert rgw.policy_hash == old_hash
    # Before: the model is allowed.
    client.chat.completions.create(model="gpt-4o-blocked", messages=msgs())

    stream_corr = new_corr()
    raw = client.chat.completions.with_raw_response.create(model="slow-stream", messages=msgs(), user=stream_corr, stream=True)
    stream_rid = raw.headers.get(RID)
    chunks: list[Any] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def consume() -> None:
        try:
            for c in raw.parse():
                chunks.append(c)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    wait_until(lambda: len(chunks) >= 5, 10, what="the first stream chunks")

    new_hash = rgw.write_config(reload_manifests(pki, mocks, tightened=True))
    assert new_hash != old_hash
    wait_until(lambda: f"tollgate-gateway: config reloaded policy={new_hash}" in rgw.stderr(), 5, what="config reloaded line")
    assert not done.is_set(), "the stream ended before the reload: the test proves nothing (slow-stream too fast?)"

    # After: the new policy applies to new requests.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="gpt-4o-blocked", messages=msgs())
    denied = rgw.receipt(exc.value.response.headers.get(RID))
    assert denied["policy_hash"] == new_hash
    capped_corr = new_corr()
    client.chat.completions.create(model=OPENAI_MODEL, messages=msgs(), user=capped_corr)
    (capped,) = mocks.primary.for_corr(capped_corr)
    assert capped["max_tokens"] == 64, "the new maxTokens is applied to requests that omit max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=OPENAI_MODEL, messages=msgs(), max_tokens=1000)

    assert done.wait(15), "the in-flight stream did not finish"
    t.join(5)
    assert not errors, f"the in-flight stream broke across the reload: {errors!r}"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"d{i} " for i in range(60)), f"stream content damaged: {text!r}"
    assert chunks[-1].choices[0].finish_reason == "stop"
    r = rgw.receipt(stream_rid)
    assert r["verdict"]["reason"] == "allowed" and r["usage"] == CHAT_USAGE, r
    assert r["policy_hash"] == old_hash, "a request finishes under the policy it started with"
    mocks.primary.wait_for(stream_corr, "stream_complete")
    status, body, _ = rgw.admin_get("/ready")
    assert status == 200 and new_hash in body, body


# =========================================================================== policy modes


def test_audit_mode_forwards_and_records_the_would_deny(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    """mode: audit forwards what the policy does not allow and records a would-deny verdict."""
    docs = [*base_providers(pki, mocks), doc("EgressPolicy", "default", {"mode": "audit", "allow": [{"providerRef": "openai-mock", "models": [OPENAI_MODEL]}]})]
    agw = gateways.start("audit", docs)
    client = agw.openai()
    raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs())
    ok = agw.receipt(raw.headers.get(RID))
    passed = lambda guard: {"detail": None, "guard": guard, "outcome": "passed"}  # noqa: E731
    assert ok["verdict"] == {"decision": "allow", "reason": "allowed", "guards": [],
                             "checks": [passed("secret_scan"), passed("model_allowlist")]}, ok["verdict"]
    corr = new_corr()
    try:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-blocked", messages=msgs(), user=corr)
    except openai.APIStatusError as e:
        pytest.fail(f"audit mode refused a disallowed model with {e.status_code} instead of forwarding it: {e.response.text}")
    assert raw.parse().choices[0].message.content == COMPLETION_TEXT
    assert mocks.primary.for_corr(corr), "audit mode must forward the request"
    r = agw.receipt(raw.headers.get(RID))
    v = r["verdict"]
    assert v["reason"] != "allowed" or v["guards"], f"audit mode must record the would-deny, got {v}"
    assert {"detail": None, "guard": "model_allowlist", "outcome": "audit_only"} in v["checks"], v


def test_disabled_policy_refuses_all_traffic(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    """mode: disabled turns the policy off: the gateway refuses LLM traffic, never passes it through."""
    docs = [*base_providers(pki, mocks), doc("EgressPolicy", "default", {"mode": "disabled", "allow": [{"providerRef": "openai-mock", "models": ["*"]}]})]
    dgw = gateways.start("disabled", docs, wait_ready=False)
    corr = new_corr()
    with pytest.raises(openai.APIStatusError) as exc:
        dgw.openai().chat.completions.create(model=OPENAI_MODEL, messages=msgs(), user=corr)
    assert exc.value.status_code in (403, 503), exc.value.status_code
    assert_openai_error(exc.value.response, exc.value.status_code)
    with pytest.raises(anthropic.APIStatusError) as aexc:
        dgw.anthropic().messages.create(model=CLAUDE_MODEL, max_tokens=16, messages=msgs())
    assert aexc.value.status_code in (403, 503)
    assert not mocks.primary.for_corr(corr)
    status, body, _ = dgw.admin_get("/ready")
    assert status == 503, (status, body)


# =========================================================================== drain and spool limits


def test_sigterm_drains_an_in_flight_stream(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> None:
    dgw = gateways.start("drain", reload_manifests(pki, mocks, tightened=False))
    corr = new_corr()
    raw = dgw.openai().chat.completions.with_raw_response.create(model="slow-stream", messages=msgs(), user=corr, stream=True)
    rid = raw.headers.get(RID)
    it = iter(raw.parse())
    chunks = [next(it) for _ in range(5)]
    dgw.proc.send_signal(signal.SIGTERM)
    chunks += list(it)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"d{i} " for i in range(60)), "SIGTERM cut an in-flight stream"
    assert dgw.stop() == 0, dgw.stderr()[-2000:]
    assert f"tollgate-gateway: stream {dgw.stream_id} closed" in dgw.stderr()
    lines = dgw.spool_lines()
    ids = [((line.get("envelope") or {}).get("record") or {}).get("receipt", {}).get("body", {}).get("id") for line in lines]
    assert rid in ids, "the drained request has no receipt"
    assert "close" in lines[-1]["envelope"]["record"], "the close record must come last, after the drained request's receipt"
    assert dgw.receipt(rid)["verdict"]["reason"] == "allowed"


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_full_spool_refuses_or_serves_by_fail_mode(gateways: GatewayFactory, pki: Pki, mocks: Mocks, fail_mode: str) -> None:
    docs = [*base_providers(pki, mocks), doc("EgressPolicy", "default", {"allow": [{"providerRef": "openai-mock", "models": ["*"]}], "failMode": fail_mode})]
    sgw = gateways.start(f"spool-{fail_mode}", docs, ["--spool-max-bytes", "72000"])
    client = sgw.openai()
    statuses: list[int] = []
    refusal = None
    for _ in range(12):
        try:
            raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=msgs())
            raw.parse()
            statuses.append(200)
            sgw.receipt(raw.headers.get(RID))  # written before the next request is judged
        except openai.APIStatusError as e:
            statuses.append(e.status_code)
            refusal = e
    if fail_mode == "closed":
        assert statuses[0] == 200 and 503 in statuses, statuses
        first = statuses.index(503)
        assert set(statuses[first:]) == {503}, statuses
        assert_openai_error(refusal.response, 503)
        status, body, _ = sgw.admin_get("/ready")
        assert status == 503 and "spool" in body, (status, body)
    else:
        assert set(statuses) == {200}, f"failMode open must keep serving when the spool is full: {statuses}"


# =========================================================================== shutdown and 3. privacy (must stay last)


def test_zz_shutdown_closes_streams_and_nothing_private_is_kept(gateways: GatewayFactory, gw: Gateway, mocks: Mocks) -> None:
    problems = []
    for g in gateways.started:
        rc = g.stop()
        if rc != 0:
            problems.append(f"{g.name}: exit code {rc}")
        if f"tollgate-gateway: stream {g.stream_id} closed" not in g.stderr():
            problems.append(f"{g.name}: no 'stream {g.stream_id} closed' line on stderr")
        lines = g.spool_lines()
        if not lines or "certificate" not in lines[0]:
            problems.append(f"{g.name}: spool does not start with the certificate")
        last = (lines[-1].get("envelope") or {}).get("record") or {} if lines else {}
        if "close" not in last:
            problems.append(f"{g.name}: last spool line is not a close record: {json.dumps(lines[-1])[:300] if lines else None}")
        envelopes = [line["envelope"] for line in lines[1:] if "envelope" in line]
        seqs = [e.get("seq") for e in envelopes]
        if seqs != list(range(1, len(envelopes) + 1)):
            problems.append(f"{g.name}: envelope seqs are not 1..n: {seqs[:20]}")
    assert not problems, "\n".join(problems)

    receipts = sum(len(g.receipts()) for g in gateways.started)
    assert receipts >= 30, f"expected the suite's receipts in the spools, found {receipts}"

    needles = {
        "prompt marker": PROMPT_MARKER,
        "completion text": COMPLETION_MARKER,
        "end-user id": CORR_PREFIX,
        "client OpenAI key": OPENAI_CLIENT_KEY,
        "client Anthropic key": ANTHROPIC_CLIENT_KEY,
        "PEM private key": "BEGIN RSA PRIVATE KEY",
        "AWS key": AWS_KEY,
        **{f"injected OpenAI {k}": v for k, v in OPENAI_KEYS.items()},
        **{f"injected Anthropic {k}": v for k, v in ANTHROPIC_KEYS.items()},
        **{f"injected Azure {k}": v for k, v in AZURE_KEYS.items()},
        "client Azure key": AZURE_CLIENT_KEY,
        **{f"injected Gemini {k}": v for k, v in GEMINI_KEYS.items()},
        "injected Bedrock secret": BEDROCK_SECRET,
        "client Bedrock secret": BEDROCK_CLIENT_SECRET,
        "client Gemini key": GEMINI_CLIENT_KEY,
        # Key material without its prefix, in case it is logged in parts.
        "injected key tail": OPENAI_KEYS["key-a"].split("INJECTED-KEY-")[1],
    }
    leaks = []
    for g in gateways.started:
        # The compiled config travels to every gateway: it must hold no key either.
        files = sorted(g.spool_dir.rglob("*")) + [g.stderr_path, g.config_path]
        for f in files:
            if not f.is_file():
                continue
            text = f.read_text(errors="replace")
            for what, needle in needles.items():
                if needle in text:
                    leaks.append(f"{what} in {f}")
    assert not leaks, "private data kept by the gateway:\n" + "\n".join(leaks)
