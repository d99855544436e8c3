#!/usr/bin/env python3
"""A local HTTPS stand-in for the OpenAI, Anthropic, Azure OpenAI, Gemini,
Vertex AI and Amazon Bedrock runtime APIs, and for the AWS and Google token
services, for the SDK suite.

It speaks the providers' real wire shapes (JSON bodies and SSE streams) so the
official SDKs, through the gateway, parse its answers exactly as they would
parse the real services'. It never calls out: it listens on 127.0.0.1 (or, with ``--bind``, a test node's
own address in 198.18.0.0/15).

Every request is appended to ``--log`` as one JSON line (path, lower-cased
headers, sha256 of the body, the parsed model, stream flags, a correlation id
taken from ``user`` / ``metadata.user_id``, or for Gemini, which has no such
field, the first ``corr…`` token in the body); prompts are never logged.

Behaviours, keyed by the requested model name:

- ``fail-429``: 429 with an OpenAI rate-limit error body and ``retry-after: 7``;
- ``redirect-me``: 302 to ``--redirect-to`` (another mock), never followed by a
  well-behaved gateway;
- ``slow-stream``: an SSE stream of 60 deltas, 50 ms apart; logs
  ``{"event": "cancelled"}`` when a write fails because the peer went away, or
  ``{"event": "stream_complete"}`` after the last event;
- ``close-delimited``: an SSE stream without chunked encoding, ended by closing
  the connection;
- ``claude-cached``: an Anthropic answer whose usage carries prompt-cache reads
  and writes;
- faults, on OpenAI chat streams: ``stall-mid-stream`` sends two deltas, then
  nothing for 60 s; ``reset-mid-stream`` sends two deltas, then resets the TCP
  connection (RST, no TLS close); ``huge-headers`` answers with 10 MB of
  response headers;
- Bedrock (``/model/{id}/...``): every request must carry a SigV4 signature
  that verifies, by botocore's own signer, against a ``--aws-key`` (else 403
  as Bedrock answers); ``bedrock.throttled-v1:0`` streams then sends a
  throttling exception message, ``bedrock.corrupt-v1:0`` streams a frame
  with a bad checksum;
- STS (``POST /`` with ``Action=AssumeRoleWithWebIdentity``): trades the
  ``--sts-token`` (or, with ``--sts-audience``, any ServiceAccount JWT for
  that audience) for temporary credentials (key id ``ASIA...``, secret
  ``sts_secret(token)``, a session token), which Bedrock requests may then
  be signed with (the session token signed over); any other token is
  refused with ``InvalidIdentityToken``;
- Vertex AI (``/{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}``):
  served like the Gemini API, for a bearer token the mock's IAM issued
  (or, with ``--gcp-direct``, its STS) or an ``x-goog-api-key``; anything
  else is 401 ``UNAUTHENTICATED``;
- Google STS (``POST /v1/token``, an RFC 8693 token exchange): trades the
  ``--sts-token`` (or, with ``--gcp-audience``, any ServiceAccount JWT for
  that audience) for a federated token, when ``audience`` is ``--gcp-pool``;
  else 400 ``invalid_grant``;
- IAM Credentials (``POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken``):
  for a federated token and ``--gcp-service-account``, an access token
  (``google_access_token(federated)``); else 403 ``PERMISSION_DENIED``;
- Microsoft Entra ID (``POST /{tenant}/oauth2/v2.0/token``, a client
  credentials grant with a federated client assertion): for ``--entra-tenant``
  and ``--entra-client-id``, trades the ``--sts-token`` (or, with
  ``--entra-audience``, any ServiceAccount JWT for that audience) for an
  access token (``entra_access_token(assertion)``) that Azure OpenAI paths
  then accept as ``Authorization: Bearer``; else 401 ``invalid_client``;
- an OpenAI bearer key containing ``REVOKED``: 401 ``invalid_api_key``, as
  OpenAI answers a revoked key;
- anything else: an immediate answer with fixed usage numbers (see USAGE).

``--fail-all-429`` makes the instance answer every API call with 429 (the
primary of a failover pair), or with 503 when the model name contains "503". ``--tag`` names the instance; it appears in the
log, in completion text and in ``system_fingerprint``.

Run: ``mock_upstream.py --cert leaf.pem --key leaf.key --log LOG --tag primary
[--port 0] [--redirect-to URL] [--marker TEXT] [--fail-all-429]``. It prints
``mock_upstream: listening port=N tag=TAG`` on stdout once it accepts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import itertools
import json
import re
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from typing import Any

# Chat models that make the mock misbehave, and how big "huge" headers are.
FAULTS = ("stall-mid-stream", "reset-mid-stream", "huge-headers")
HUGE_HEADER_BYTES = 10 * 1024 * 1024

# Fixed usage numbers the tests assert on (via receipts).
USAGE = {
    # OpenAI chat: prompt_tokens includes the cached ones.
    "chat": {"prompt_tokens": 1200, "completion_tokens": 300, "cached_tokens": 200},
    "embeddings": {"prompt_tokens": 9},
    # Anthropic: input_tokens excludes cache reads and writes.
    "messages": {"input_tokens": 250, "output_tokens": 40},
    # Cache writes: 40 to the 5-minute cache, 60 to the 1-hour one.
    "messages_cached": {"input_tokens": 50, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 100,
                        "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60}, "output_tokens": 20},
    "count_tokens": {"input_tokens": 42},
    # OpenAI Responses: input_tokens includes the cached ones.
    "responses": {"input_tokens": 700, "cached_tokens": 200, "output_tokens": 50},
    # Gemini: promptTokenCount includes cached content; thoughts are apart
    # from candidatesTokenCount.
    "gemini": {"promptTokenCount": 1200, "candidatesTokenCount": 300, "cachedContentTokenCount": 200, "thoughtsTokenCount": 50},
    "gemini_count": {"totalTokens": 42},
}
# Bedrock Converse: inputTokens excludes cache reads and writes.
USAGE["converse"] = {"inputTokens": 900, "outputTokens": 120, "cacheReadInputTokens": 300, "cacheWriteInputTokens": 100}
def jwt_claims(token: str) -> dict:
    """The claims of a JWT, unverified ({} for anything else)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_subject(token: str, audience: str) -> str | None:
    """The subject of a ServiceAccount JWT whose audience includes
    `audience`, or None. (The mock trusts the kubelet that issued it: the
    signature is not checked; the audience and subject are.)"""
    claims = jwt_claims(token)
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    sub = claims.get("sub")
    if audience in audiences and isinstance(sub, str) and sub.startswith("system:serviceaccount:"):
        return sub
    return None


def jwt_audience(token: str) -> Any:
    """The `aud` claim of a JWT (a claim, not a secret), for the log."""
    return jwt_claims(token).get("aud")


def federated_token(token: str) -> str:
    """The federated token Google's STS issues for a subject token."""
    return "fed." + hashlib.sha256(f"federated/{token}".encode()).hexdigest()[:40]


def google_access_token(federated: str) -> str:
    """The service account token IAM issues for a federated token
    (deterministic, so a test can look for it in what the gateway stored)."""
    return "ya29.mock" + hashlib.sha256(f"sa/{federated}".encode()).hexdigest()[:40]


def entra_access_token(assertion: str) -> str:
    """The access token Entra ID issues for a client assertion."""
    return "eyJ0eXAiOiJKV1QifQ.entra" + hashlib.sha256(f"entra/{assertion}".encode()).hexdigest()[:40] + ".sig"


def sts_secret(token: str) -> str:
    """The secret of the temporary credentials issued for a web identity token
    (deterministic, so a test can look for it in what the gateway stored)."""
    return "sts" + hashlib.sha256(token.encode()).hexdigest()[:37]


CONVERSE_KEYS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields",
                 "additionalModelResponseFieldPaths", "promptVariables", "requestMetadata", "performanceConfig"}
CLAUDE_INVOKE_KEYS = {"anthropic_version", "anthropic_beta", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
                      "stop_sequences", "tools", "tool_choice", "thinking", "metadata"}
BEDROCK_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream|count-tokens)$")
SIGV4_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")
VERTEX_PATH = re.compile(r"^/(v1beta1|v1)/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)$")
IAM_PATH = re.compile(r"^/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken$")
GEMINI_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)$")
CORR_TOKEN = re.compile(rb"corr[0-9a-f]{12}-[0-9a-f]{10}")
REASONING_TOKENS = 120
EMBEDDING_DIMS = 8
SLOW_DELTAS = 60
SLOW_INTERVAL = 0.05
STREAM_PIECES = ["Hello", " from", " the", " mock", " upstream", "."]


def embedding_vector(index: int) -> list[float]:
    """Values exactly representable in float32, distinct per input index."""
    return [(index + 1) * (j - 3) / 8.0 for j in range(EMBEDDING_DIMS)]


class PeerGone(Exception):
    """The client closed the connection while we were writing."""


class MockState:
    def __init__(self, tag: str, log_path: str, marker: str, redirect_to: str | None, fail_all_429: bool,
                 aws_keys: dict[str, str] | None = None, sts_token: str | None = None, sts_role: str | None = None,
                 sts_audience: str | None = None, gcp_pool: str | None = None, gcp_service_account: str | None = None,
                 gcp_audience: str | None = None, gcp_direct: bool = False, entra_tenant: str | None = None,
                 entra_client_id: str | None = None, entra_audience: str | None = None):
        self.entra_tenant = entra_tenant
        self.entra_client_id = entra_client_id
        self.entra_audience = entra_audience
        self.entra_tokens: set[str] = set()
        self.sts_audience = sts_audience
        self.gcp_pool = gcp_pool
        self.gcp_service_account = gcp_service_account
        self.gcp_audience = gcp_audience
        # Federated tokens issued, and the bearer tokens Vertex accepts.
        self.federated: set[str] = set()
        self.google_tokens: set[str] = set()
        self.gcp_direct = gcp_direct
        self.aws_keys = aws_keys or {}
        # Temporary key id -> its session token, for keys STS issued.
        self.session_tokens: dict[str, str] = {}
        self.sts_token = sts_token
        self.sts_role = sts_role
        self.tag = tag
        self.log_path = log_path
        self.marker = marker
        self.redirect_to = redirect_to
        self.fail_all_429 = fail_all_429
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def next_id(self) -> int:
        with self.lock:
            return next(self.counter)

    def log(self, record: dict[str, Any]) -> None:
        record = {"tag": self.tag, "time": time.time(), **record}
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def completion_text(self) -> str:
        return f"{self.marker} answer from {self.tag}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-upstream/1"
    sys_version = ""
    state: MockState  # set on the subclass per server

    # ------------------------------------------------------------ plumbing
    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any, extra_headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _start_sse(self, extra_headers: dict[str, str], close_delimited: bool = False,
                   content_type: str = "text/event-stream; charset=utf-8") -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("cache-control", "no-cache")
        for k, v in extra_headers.items():
            self.send_header(k, v)
        if close_delimited:
            self.send_header("connection", "close")
            self.close_connection = True
        else:
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self._chunked = not close_delimited

    def _write_event(self, data: str, event: str | None = None) -> None:
        self._write_raw((f"event: {event}\n" if event else "") + f"data: {data}\n\n")

    def _write_raw(self, text: str | bytes) -> None:
        raw = text if isinstance(text, bytes) else text.encode()
        try:
            if self._chunked:
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            else:
                self.wfile.write(raw)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
            raise PeerGone(str(e)) from e

    def _end_sse(self) -> None:
        try:
            if self._chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
            raise PeerGone(str(e)) from e
        if not self._chunked:
            # A close-delimited body ends with a TLS close_notify, as real
            # servers send it; without one the end is indistinguishable from a
            # truncation and a careful client treats it as an error.
            try:
                self.connection.settimeout(2)
                self.connection.unwrap()
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------ dispatch
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        st = self.state
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        parsed: Any = None
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        obj = parsed if isinstance(parsed, dict) else {}
        corr = obj.get("user")
        if not corr and isinstance(obj.get("metadata"), dict):
            corr = obj["metadata"].get("user_id")
        record = {
            "event": "request",
            "method": method,
            "path": self.path,
            "headers": headers,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_length": len(body),
            "json_ok": isinstance(parsed, dict),
            "model": obj.get("model"),
            "stream": obj.get("stream"),
            "stream_options": obj.get("stream_options"),
            "max_tokens": obj.get("max_tokens"),
            "encoding_format": obj.get("encoding_format"),
            "corr": corr,
        }
        path = self.path.split("?")[0]
        model = obj.get("model") or ""
        # Azure OpenAI: the deployment in the path, api-version in the query,
        # the key in api-key; served like the OpenAI path it stands for.
        azure = re.match(r"^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)$", path)
        if azure:
            query = urllib.parse.parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
            record["azure"] = {"deployment": azure[1], "api_version": (query.get("api-version") or [None])[0]}
            if not record["azure"]["api_version"]:
                record["status"] = 404
                st.log(record)
                self._send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
                return
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            with st.lock:
                entra = bearer in st.entra_tokens
            record["azure"]["auth"] = "entra-token" if entra else "api-key" if headers.get("api-key") else "none"
            if record["azure"]["auth"] == "none":
                record["status"] = 401
                st.log(record)
                self._send_json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}})
                return
            headers = dict(headers, authorization=f"Bearer {headers['api-key'] if not entra else bearer}")
            path, model = f"/v1/{azure[2]}", azure[1]
        if path == "/" and method == "POST" and b"Action=AssumeRoleWithWebIdentity" in body:
            self._sts(body, headers, record)
            return
        entra_grant = re.match(r"^/([^/]+)/oauth2/v2\.0/token$", path)
        if entra_grant and method == "POST":
            self._entra(entra_grant[1], body, headers, record)
            return
        if path == "/v1/token" and method == "POST":
            self._google_sts(body, record)
            return
        iam = IAM_PATH.match(path)
        if iam and method == "POST":
            self._google_iam(iam[1], obj, headers, record)
            return
        vertex = VERTEX_PATH.match(path)
        if vertex:
            found = CORR_TOKEN.search(body)
            record["corr"] = corr = found.group().decode() if found else None
            record["vertex"] = {"version": vertex[1], "project": vertex[2], "location": vertex[3], "model": vertex[4],
                                "method": vertex[5]}
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            with st.lock:
                record["vertex"]["auth"] = ("issued-token" if bearer in st.google_tokens
                                            else "api-key" if headers.get("x-goog-api-key") else "none")
            if record["vertex"]["auth"] == "none":
                return self._google_error(record, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
            try:
                self._gemini(vertex[4], vertex[5], obj, headers, record, authenticated=True)
            except PeerGone as e:
                st.log({"event": "cancelled", "corr": corr, "path": path, "error": str(e)[:200]})
                self.close_connection = True
            return
        bedrock = BEDROCK_PATH.match(path)
        if bedrock:
            found = CORR_TOKEN.search(body)
            record["corr"] = corr = found.group().decode() if found else None
            record["bedrock"] = {"model": urllib.parse.unquote(bedrock[1]), "operation": bedrock[2]}
            try:
                self._bedrock(record["bedrock"]["model"], bedrock[2], obj, headers, body, record)
            except PeerGone as e:
                st.log({"event": "cancelled", "corr": corr, "path": path, "error": str(e)[:200]})
                self.close_connection = True
            return
        gemini = GEMINI_PATH.match(path)
        if gemini:
            found = CORR_TOKEN.search(body)
            record["corr"] = corr = found.group().decode() if found else None
            record["gemini"] = {"version": gemini[1], "model": gemini[2], "method": gemini[3]}
            try:
                self._gemini(gemini[2], gemini[3], obj, headers, record)
            except PeerGone as e:
                st.log({"event": "cancelled", "corr": corr, "path": path, "error": str(e)[:200]})
                self.close_connection = True
            return
        try:
            self._route(method, path, model, obj, headers, record, corr)
        except PeerGone as e:
            st.log({"event": "cancelled", "corr": corr, "path": path, "model": model, "error": str(e)[:200]})
            self.close_connection = True

    def _route(self, method: str, path: str, model: str, obj: dict, headers: dict, record: dict, corr: Any) -> None:
        st = self.state
        openai_paths = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
        anthropic_paths = ("/v1/messages", "/v1/messages/count_tokens")
        if method != "POST" or path not in openai_paths + anthropic_paths:
            record["status"] = 404
            st.log(record)
            self._send_json(404, {"error": {"message": f"Unknown path {path}", "type": "invalid_request_error", "param": None, "code": "unknown_url"}})
            return
        is_anthropic = path in anthropic_paths
        # Authentication as the real services do it.
        if is_anthropic:
            if not headers.get("x-api-key") and not headers.get("authorization", "").startswith("Bearer "):
                record["status"] = 401
                st.log(record)
                self._send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "x-api-key or authorization header is required"}})
                return
            if not headers.get("anthropic-version"):
                record["status"] = 400
                st.log(record)
                self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"}})
                return
        elif not headers.get("authorization", "").startswith("Bearer "):
            record["status"] = 401
            st.log(record)
            self._send_json(401, {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error", "param": None, "code": None}})
            return
        elif "REVOKED" in headers["authorization"]:
            record["status"] = 401
            st.log(record)
            self._send_json(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
            return
        if not record["json_ok"]:
            record["status"] = 400
            st.log(record)
            self._send_json(400, {"error": {"message": "We could not parse the JSON body of your request.", "type": "invalid_request_error", "param": None, "code": None}})
            return
        if st.fail_all_429 and "503" in model:
            record["status"] = 503
            st.log(record)
            self._send_json(503, {"error": {"message": f"mock {st.tag}: The server is overloaded", "type": "server_error", "param": None, "code": None}})
            return
        if st.fail_all_429 or model == "fail-429":
            record["status"] = 429
            st.log(record)
            if is_anthropic:
                self._send_json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": f"mock {st.tag}: rate limited"}}, {"retry-after": "7"})
            else:
                self._send_json(429, {"error": {"message": f"mock {st.tag}: Rate limit reached for requests", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, {"retry-after": "7", "x-request-id": f"req_mock_{st.tag}_429"})
            return
        if model == "redirect-me":
            record["status"] = 302
            st.log(record)
            target = (st.redirect_to or "https://localhost:1") + path
            body = b'{"redirect": true}'
            self.send_response(302)
            self.send_header("location", target)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        record["status"] = 200
        st.log(record)
        if path == "/v1/chat/completions":
            self._chat(model, obj, corr)
        elif path == "/v1/responses":
            self._responses(model, obj, corr)
        elif path == "/v1/embeddings":
            self._embeddings(model, obj)
        elif path == "/v1/messages":
            self._messages(model, obj, corr)
        elif path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": USAGE["count_tokens"]["input_tokens"]}, {"request-id": f"req_mock_ct_{st.next_id()}"})
        else:
            self._send_json(404, {"error": {"message": f"mock does not implement {path}", "type": "invalid_request_error", "param": None, "code": "unknown_url"}})

    # ------------------------------------------------------------ Bedrock
    def _sigv4(self, headers: dict, body: bytes) -> str:
        """Checks the request's SigV4 signature with botocore's signer: "valid",
        or why not. Only the headers the signature names are signed over."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        m = SIGV4_AUTH.match(headers.get("authorization", ""))
        if not m:
            return "no signature"
        key_id, date, region, service, signed, signature = m.groups()
        secret = self.state.aws_keys.get(key_id)
        if secret is None:
            return "unknown key"
        if service != "bedrock" or not headers.get("x-amz-date", "").startswith(date):
            return "wrong scope"
        names = signed.split(";")
        if any(n not in headers for n in names):
            return "a signed header is missing"
        session_token = self.state.session_tokens.get(key_id)
        if session_token is not None and (headers.get("x-amz-security-token") != session_token
                                          or "x-amz-security-token" not in names):
            return "session token missing or unsigned"
        request = AWSRequest(method=self.command, url=f"https://{headers['host']}{self.path}", data=body,
                             headers={n: headers[n] for n in names})
        request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(Credentials(key_id, secret), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        return "valid" if expected == signature else "mismatch"

    def _sts(self, body: bytes, headers: dict, record: dict) -> None:
        """AssumeRoleWithWebIdentity: an unsigned form whose token is the proof."""
        st = self.state
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        token = (form.get("WebIdentityToken") or [""])[0]
        role = (form.get("RoleArn") or [""])[0]
        subject = jwt_subject(token, st.sts_audience) if st.sts_audience else None
        record["sts"] = {"role": role, "session": (form.get("RoleSessionName") or [""])[0],
                         "duration": (form.get("DurationSeconds") or [""])[0],
                         "token_ok": (bool(st.sts_token) and token == st.sts_token) or subject is not None,
                         "subject": subject, "token_audience": jwt_audience(token),
                         "signed": "authorization" in headers}
        if not record["sts"]["token_ok"] or role != st.sts_role:
            record["status"] = 400
            st.log(record)
            error = ("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
                     "<Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message>"
                     "</Error><RequestId>sts-err</RequestId></ErrorResponse>")
            self._send_raw(400, error.encode(), "text/xml")
            return
        key_id = f"ASIAMOCK{st.next_id():08d}"
        session_token = "IQoJmock" + hashlib.sha256(f"{token}/{key_id}".encode()).hexdigest()
        with st.lock:
            st.aws_keys[key_id] = sts_secret(token)
            st.session_tokens[key_id] = session_token
        record["status"] = 200
        record["sts"]["issued"] = key_id
        st.log(record)
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        answer = (f"<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult>"
                  f"<Credentials><AccessKeyId>{key_id}</AccessKeyId><SecretAccessKey>{sts_secret(token)}</SecretAccessKey>"
                  f"<SessionToken>{session_token}</SessionToken><Expiration>{expiration}</Expiration></Credentials>"
                  f"<SubjectFromWebIdentityToken>system:serviceaccount:demo:app</SubjectFromWebIdentityToken>"
                  f"</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>")
        self._send_raw(200, answer.encode(), "text/xml")

    def _google_sts(self, body: bytes, record: dict) -> None:
        """Google's token exchange: an unsigned form whose subject token is the proof."""
        st = self.state
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        one = lambda name: (form.get(name) or [""])[0]  # noqa: E731
        token = one("subject_token")
        subject = jwt_subject(token, st.gcp_audience) if st.gcp_audience else None
        record["gcp_sts"] = {"audience": one("audience"), "scope": one("scope"), "grant_type": one("grant_type"),
                             "subject_token_type": one("subject_token_type"),
                             "token_ok": (bool(st.sts_token) and token == st.sts_token) or subject is not None,
                             "subject": subject, "token_audience": jwt_audience(token)}
        if not record["gcp_sts"]["token_ok"] or one("audience") != st.gcp_pool:
            record["status"] = 400
            st.log(record)
            self._send_json(400, {"error": "invalid_grant", "error_description": "The audience in ID Token does not match the expected audience."})
            return
        federated = federated_token(token)
        with st.lock:
            st.federated.add(federated)
            if st.gcp_direct:
                st.google_tokens.add(federated)
        record["status"] = 200
        st.log(record)
        self._send_json(200, {"access_token": federated, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                              "token_type": "Bearer", "expires_in": 3600})

    def _entra(self, tenant: str, body: bytes, headers: dict, record: dict) -> None:
        """A client-credentials grant whose client assertion is the pod's token."""
        st = self.state
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        one = lambda name: (form.get(name) or [""])[0]  # noqa: E731
        assertion = one("client_assertion")
        subject = jwt_subject(assertion, st.entra_audience) if st.entra_audience else None
        record["entra"] = {"tenant": tenant, "client_id": one("client_id"), "scope": one("scope"),
                           "grant_type": one("grant_type"), "assertion_type": one("client_assertion_type"),
                           "token_ok": (bool(st.sts_token) and assertion == st.sts_token) or subject is not None,
                           "subject": subject, "token_audience": jwt_audience(assertion), "signed": "authorization" in headers}
        if not record["entra"]["token_ok"] or tenant != st.entra_tenant or one("client_id") != st.entra_client_id:
            record["status"] = 401
            st.log(record)
            self._send_json(401, {"error": "invalid_client", "error_description":
                                  "AADSTS700213: No matching federated identity record found for presented assertion subject.",
                                  "error_codes": [700213]})
            return
        token = entra_access_token(assertion)
        with st.lock:
            st.entra_tokens.add(token)
        record["status"] = 200
        st.log(record)
        self._send_json(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def _google_iam(self, account: str, obj: dict, headers: dict, record: dict) -> None:
        """generateAccessToken: a federated token asks for the service account's own."""
        st = self.state
        federated = headers.get("authorization", "").removeprefix("Bearer ")
        with st.lock:
            known = federated in st.federated
        record["gcp_iam"] = {"account": account, "federated_ok": known, "scope": obj.get("scope"), "lifetime": obj.get("lifetime")}
        if not known or account != st.gcp_service_account:
            return self._google_error(record, 403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")
        token = google_access_token(federated)
        with st.lock:
            st.google_tokens.add(token)
        record["status"] = 200
        record["gcp_iam"]["issued"] = token[:12]
        st.log(record)
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        self._send_json(200, {"accessToken": token, "expireTime": expire})

    def _send_raw(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _aws_error(self, record: dict, status: int, kind: str, message: str) -> None:
        record["status"] = status
        self.state.log(record)
        self._send_json(status, {"message": message}, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                                                       "x-amzn-RequestId": f"bdrk-err-{self.state.next_id()}"})

    def _write_frame(self, event_type: str, payload: Any, message_type: str = "event", bad_crc: bool = False) -> None:
        kind = ":exception-type" if message_type == "exception" else ":event-type"
        headers = {kind: event_type, ":content-type": "application/json", ":message-type": message_type}
        encoded = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode() for k, v in headers.items())
        data = json.dumps(payload).encode()
        prelude = struct.pack(">II", 16 + len(encoded) + len(data), len(encoded))
        message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + data
        crc = zlib.crc32(message) ^ (1 if bad_crc else 0)
        self._write_raw(message + struct.pack(">I", crc))

    def _bedrock(self, model: str, operation: str, obj: dict, headers: dict, body: bytes, record: dict) -> None:
        st = self.state
        record["sigv4"] = verdict = self._sigv4(headers, body)
        if verdict in ("no signature", "unknown key"):
            return self._aws_error(record, 403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if verdict != "valid":
            return self._aws_error(record, 403, "InvalidSignatureException",
                                   "The request signature we calculated does not match the signature you provided.")
        if not record["json_ok"]:
            return self._aws_error(record, 400, "ValidationException", "Malformed input request, please reformat your input and try again.")
        # As Bedrock does, keys it does not know are refused.
        known = {"input"} if operation == "count-tokens" else CONVERSE_KEYS if operation.startswith("converse") else CLAUDE_INVOKE_KEYS
        extraneous = sorted(set(obj) - known)
        if extraneous:
            return self._aws_error(record, 400, "ValidationException", f"Malformed input request: extraneous key [{extraneous[0]}] is not permitted")
        converse = (obj.get("input") or {}).get("converse") or {}
        if operation == "count-tokens" and set(converse) - {"messages", "system", "toolConfig", "additionalModelRequestFields"}:
            return self._aws_error(record, 400, "ValidationException", "Malformed input request: input.converse")
        record["status"] = 200
        st.log(record)
        n = st.next_id()
        request_id = {"x-amzn-RequestId": f"bdrk-req-{n}"}
        text = st.completion_text()
        u = USAGE["converse"]
        usage = dict(u, totalTokens=u["inputTokens"] + u["outputTokens"] + u["cacheReadInputTokens"] + u["cacheWriteInputTokens"])
        claude_usage = USAGE["messages"]
        if operation == "count-tokens":
            self._send_json(200, {"inputTokens": USAGE["gemini_count"]["totalTokens"]}, request_id)
        elif operation == "converse":
            self._send_json(200, {"output": {"message": {"role": "assistant", "content": [{"text": text}]}}, "stopReason": "end_turn",
                                  "usage": usage, "metrics": {"latencyMs": 42}}, request_id)
        elif operation == "invoke":
            self._send_json(200, {"id": f"msg_bdrk_{n}", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
                                  "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                                  "usage": claude_usage}, request_id)
        elif operation == "converse-stream":
            self._start_sse(request_id, content_type="application/vnd.amazon.eventstream")
            self._write_frame("messageStart", {"role": "assistant"})
            if model == "bedrock.throttled-v1:0":
                self._write_frame("throttlingException", {"message": "Too many requests, please wait before trying again."}, "exception")
                return self._end_sse()
            for piece in [text, *STREAM_PIECES]:
                self._write_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}},
                                  bad_crc=model == "bedrock.corrupt-v1:0" and piece == ".")
            self._write_frame("contentBlockStop", {"contentBlockIndex": 0})
            self._write_frame("messageStop", {"stopReason": "end_turn"})
            self._write_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 42}})
            self._end_sse()
        else:
            self._start_sse(request_id, content_type="application/vnd.amazon.eventstream")

            def chunk(event: dict) -> None:
                self._write_frame("chunk", {"bytes": base64.b64encode(json.dumps(event).encode()).decode()})

            chunk({"type": "message_start", "message": {"id": f"msg_bdrk_{n}", "type": "message", "role": "assistant",
                                                        "model": "claude-3-5-haiku-20241022", "content": [],
                                                        "usage": dict(claude_usage, output_tokens=1)}})
            chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            for piece in [text, *STREAM_PIECES]:
                chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            chunk({"type": "content_block_stop", "index": 0})
            chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": claude_usage["output_tokens"]}})
            chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": claude_usage["input_tokens"], "outputTokenCount": claude_usage["output_tokens"],
                "invocationLatency": 42, "firstByteLatency": 7}})
            self._end_sse()

    # ------------------------------------------------------------ Gemini
    def _google_error(self, record: dict, status: int, code: str, message: str) -> None:
        record["status"] = status
        self.state.log(record)
        self._send_json(status, {"error": {"code": status, "message": message, "status": code}})

    def _gemini(self, model: str, method: str, obj: dict, headers: dict, record: dict, authenticated: bool = False) -> None:
        st = self.state
        query = urllib.parse.parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
        if self.command != "POST":
            return self._google_error(record, 404, "NOT_FOUND", "Method not found.")
        if not authenticated and not headers.get("x-goog-api-key") and "key" not in query:
            return self._google_error(record, 403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
        if not record["json_ok"]:
            return self._google_error(record, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if method == "streamGenerateContent" and query.get("alt") != ["sse"]:
            # The mock, like the gateway, only speaks SSE framing.
            return self._google_error(record, 400, "INVALID_ARGUMENT", "mock: streams need alt=sse")
        record["status"] = 200
        st.log(record)
        n = st.next_id()
        rid = f"gem-resp-mock-{n}"
        u = USAGE["gemini"]
        usage = dict(u, totalTokenCount=u["promptTokenCount"] + u["candidatesTokenCount"] + u["thoughtsTokenCount"])

        def chunk(text: str, final: bool) -> dict:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if final:
                candidate["finishReason"] = "STOP"
            running = usage if final else {"promptTokenCount": u["promptTokenCount"], "totalTokenCount": u["promptTokenCount"]}
            return {"candidates": [candidate], "usageMetadata": running, "modelVersion": f"{model}-001", "responseId": rid}

        if method == "generateContent":
            self._send_json(200, chunk(st.completion_text(), True))
        elif method == "streamGenerateContent":
            self._start_sse({})
            pieces = [st.completion_text(), *STREAM_PIECES]
            for i, piece in enumerate(pieces):
                # Google frames events with CRLF line ends.
                self._write_raw(f"data: {json.dumps(chunk(piece, i == len(pieces) - 1))}\r\n\r\n")
            self._end_sse()
        elif method == "countTokens":
            self._send_json(200, dict(USAGE["gemini_count"]))
        elif method == "embedContent":
            self._send_json(200, {"embedding": {"values": embedding_vector(0)}})
        else:
            requests = obj.get("requests") if isinstance(obj.get("requests"), list) else []
            self._send_json(200, {"embeddings": [{"values": embedding_vector(i)} for i in range(len(requests))]})

    # ------------------------------------------------------------ OpenAI
    def _chat_usage(self, model: str = "") -> dict:
        u = USAGE["chat"]
        # gpt-tiered reasons: REASONING_TOKENS of its completion tokens.
        reasoning = REASONING_TOKENS if model == "gpt-tiered" else 0
        return {
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cached_tokens"], "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def _chat(self, model: str, obj: dict, corr: Any) -> None:
        st = self.state
        n = st.next_id()
        cid = f"chatcmpl-mock-{n}"
        served = f"{model}-2024-07-18"
        created = int(time.time())
        headers = {"x-request-id": f"req_mock_{n}", "openai-processing-ms": "12"}
        fingerprint = f"fp_{st.tag}"
        if model in FAULTS:
            self._fault(model, cid, served, created, headers)
            return
        if not obj.get("stream"):
            text = st.completion_text()
            self._send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": served,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
                "usage": self._chat_usage(model),
                # The tier asked for, as OpenAI reports the one that served.
                "service_tier": obj.get("service_tier") or "default",
            }, headers)
            return
        include_usage = bool((obj.get("stream_options") or {}).get("include_usage"))
        slow = model == "slow-stream"
        pieces = [f"d{i} " for i in range(SLOW_DELTAS)] if slow else [st.completion_text()[:4], st.completion_text()[4:]] + STREAM_PIECES
        self._start_sse(headers, close_delimited=(model == "close-delimited"))

        def chunk(delta: dict, finish: str | None, choices: bool = True, usage: Any = None) -> str:
            c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served, "system_fingerprint": fingerprint,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
            if include_usage:
                c["usage"] = usage
            return json.dumps(c)

        self._write_event(chunk({"role": "assistant", "content": "", "refusal": None}, None))
        for piece in pieces:
            if slow:
                time.sleep(SLOW_INTERVAL)
            self._write_event(chunk({"content": piece}, None))
        self._write_event(chunk({}, "stop"))
        if include_usage:
            self._write_event(chunk({}, None, choices=False, usage=self._chat_usage()))
        self._write_event("[DONE]")
        self._end_sse()
        st.log({"event": "stream_complete", "corr": corr, "path": "/v1/chat/completions", "model": model, "deltas": len(pieces)})

    def _fault(self, model: str, cid: str, served: str, created: int, headers: dict[str, str]) -> None:
        """A provider misbehaving mid-answer (see the module docstring)."""
        if model == "huge-headers":
            self.send_response(200)
            pad = "x" * 8000
            for i in range(HUGE_HEADER_BYTES // 8000):
                self.send_header(f"x-pad-{i}", pad)
            self.send_header("content-length", "2")
            try:
                self.end_headers()
                self.wfile.write(b"{}")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
                raise PeerGone(str(e)) from e
            return
        self._start_sse(headers)
        for piece in ("partial ", "answer "):
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served,
                     "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]}
            self._write_event(json.dumps(chunk))
        if model == "stall-mid-stream":
            time.sleep(60)
            raise PeerGone("stalled on purpose")
        # reset-mid-stream: SO_LINGER 0 makes close() send RST at once. The
        # pause first lets the gateway read the deltas (an RST discards what
        # the peer's kernel has not handed over yet).
        time.sleep(0.5)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        raise PeerGone("reset on purpose")

    def _embeddings(self, model: str, obj: dict) -> None:
        inputs = obj.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        inputs = inputs or []
        b64 = obj.get("encoding_format") == "base64"
        data = []
        for i, _ in enumerate(inputs):
            vec = embedding_vector(i)
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        pt = USAGE["embeddings"]["prompt_tokens"]
        self._send_json(200, {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": pt, "total_tokens": pt}},
                        {"x-request-id": f"req_mock_emb_{self.state.next_id()}"})

    def _responses(self, model: str, obj: dict, corr: Any) -> None:
        st = self.state
        n = st.next_id()
        rid = f"resp_mock_{n}"
        item_id = f"msg_item_mock_{n}"
        served = f"{model}-2024-07-18"
        text = st.completion_text()
        u = USAGE["responses"]
        usage = {"input_tokens": u["input_tokens"], "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                 "output_tokens": u["output_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": u["input_tokens"] + u["output_tokens"]}

        def response(status: str, output: list, usage_: Any) -> dict:
            return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
                    "incomplete_details": None, "instructions": None, "max_output_tokens": obj.get("max_output_tokens"),
                    "model": served, "output": output, "parallel_tool_calls": True, "previous_response_id": None,
                    "reasoning": {"effort": None, "summary": None}, "store": True, "temperature": 1.0,
                    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
                    "truncation": "disabled", "usage": usage_, "user": obj.get("user"), "metadata": {}}

        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        headers = {"x-request-id": f"req_mock_{n}"}
        if not obj.get("stream"):
            self._send_json(200, response("completed", [item], usage), headers)
            return
        self._start_sse(headers)
        seq = itertools.count()

        def ev(kind: str, **fields: Any) -> None:
            self._write_event(json.dumps({"type": kind, "sequence_number": next(seq), **fields}), kind)

        ev("response.created", response=response("in_progress", [], None))
        ev("response.in_progress", response=response("in_progress", [], None))
        ev("response.output_item.added", output_index=0, item=dict(item, status="in_progress", content=[]))
        ev("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=dict(part, text=""))
        for piece in (text[:4], text[4:]):
            ev("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=piece, logprobs=[])
        ev("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text, logprobs=[])
        ev("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)
        ev("response.output_item.done", output_index=0, item=item)
        ev("response.completed", response=response("completed", [item], usage))
        self._end_sse()
        st.log({"event": "stream_complete", "corr": corr, "path": "/v1/responses", "model": model, "deltas": 2})

    # ------------------------------------------------------------ Anthropic
    def _anthropic_usage(self, model: str) -> dict:
        if model == "claude-cached":
            u = USAGE["messages_cached"]
            return {"input_tokens": u["input_tokens"], "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                    "cache_read_input_tokens": u["cache_read_input_tokens"], "cache_creation": u["cache_creation"],
                    "output_tokens": u["output_tokens"], "service_tier": "standard"}
        u = USAGE["messages"]
        return {"input_tokens": u["input_tokens"], "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": u["output_tokens"]}

    def _messages(self, model: str, obj: dict, corr: Any) -> None:
        st = self.state
        n = st.next_id()
        mid = f"msg_mock_{n}"
        served = f"{model}-20241022"
        headers = {"request-id": f"req_mock_{n}", "anthropic-organization-id": "mock-org"}
        usage = self._anthropic_usage(model)
        if not obj.get("stream"):
            self._send_json(200, {
                "id": mid, "type": "message", "role": "assistant", "model": served,
                "content": [{"type": "text", "text": st.completion_text()}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
            }, headers)
            return
        slow = model == "slow-stream"
        pieces = [f"d{i} " for i in range(SLOW_DELTAS)] if slow else [st.completion_text()[:4], st.completion_text()[4:]] + STREAM_PIECES
        self._start_sse(headers)
        start_usage = dict(usage, output_tokens=1)
        self._write_event(json.dumps({"type": "message_start", "message": {"id": mid, "type": "message", "role": "assistant", "model": served, "content": [],
                                                                           "stop_reason": None, "stop_sequence": None, "usage": start_usage}}), "message_start")
        self._write_event(json.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), "content_block_start")
        self._write_event(json.dumps({"type": "ping"}), "ping")
        for piece in pieces:
            if slow:
                time.sleep(SLOW_INTERVAL)
            self._write_event(json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}), "content_block_delta")
        self._write_event(json.dumps({"type": "content_block_stop", "index": 0}), "content_block_stop")
        self._write_event(json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": usage["output_tokens"]}}), "message_delta")
        self._write_event(json.dumps({"type": "message_stop"}), "message_stop")
        self._end_sse()
        st.log({"event": "stream_complete", "corr": corr, "path": "/v1/messages", "model": model, "deltas": len(pieces)})


class TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, context: ssl.SSLContext):
        self.context = context
        super().__init__(addr, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # The handshake runs lazily in the handler thread, so a stalled or
        # refusing client never blocks accept.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A gateway that refuses our certificate aborts the handshake: expected.
        pass


def serve(args: argparse.Namespace) -> None:
    aws_keys = dict(k.split(":", 1) for k in args.aws_key)
    state = MockState(args.tag, args.log, args.marker, args.redirect_to, args.fail_all_429, aws_keys, args.sts_token, args.sts_role,
                      args.sts_audience, args.gcp_pool, args.gcp_service_account, args.gcp_audience, args.gcp_direct,
                      args.entra_tenant, args.entra_client_id, args.entra_audience)
    handler = type("BoundHandler", (Handler,), {"state": state})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = TLSServer((args.bind, args.port), handler, ctx)
    port = server.server_address[1]
    print(f"mock_upstream: listening port={port} tag={args.tag}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True, help="PEM leaf certificate (with chain) to serve")
    p.add_argument("--key", required=True, help="PEM private key of the leaf")
    p.add_argument("--log", required=True, help="JSONL file to append one record per request to")
    p.add_argument("--tag", default="mock", help="name of this instance, shown in logs and answers")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on: loopback, or a test node's own address (198.18.0.0/15)")
    p.add_argument("--marker", default="MOCKCOMPLETION", help="text every completion starts with (the privacy check greps for it)")
    p.add_argument("--redirect-to", default=None, help="base URL that model redirect-me is redirected to")
    p.add_argument("--fail-all-429", action="store_true", help="answer every API call with 429")
    p.add_argument("--aws-key", action="append", default=[], help="ACCESS_KEY_ID:SECRET a Bedrock request may be signed with (repeatable)")
    p.add_argument("--sts-token", default=None, help="the web identity token STS accepts")
    p.add_argument("--sts-role", default=None, help="the role ARN STS lets that token assume")
    p.add_argument("--sts-audience", default=None,
                   help="also accept any ServiceAccount JWT with this audience (a real node's projected token)")
    p.add_argument("--gcp-pool", default=None, help="the workload identity pool provider Google's STS exchanges tokens for")
    p.add_argument("--gcp-service-account", default=None, help="the service account IAM lets federated tokens impersonate")
    p.add_argument("--gcp-audience", default=None,
                   help="also accept any ServiceAccount JWT with this audience at Google's STS (a real node's projected token)")
    p.add_argument("--gcp-direct", action="store_true", help="Vertex accepts federated tokens themselves (no impersonation)")
    p.add_argument("--entra-tenant", default=None, help="the tenant Entra ID issues tokens in")
    p.add_argument("--entra-client-id", default=None, help="the application Entra ID issues tokens for")
    p.add_argument("--entra-audience", default=None,
                   help="also accept any ServiceAccount JWT with this audience as a client assertion (a real node's projected token)")
    args = p.parse_args(argv)
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
