"""`kubectl-tollgate local`, followed the way the README tells a new user to:
start local mode on the quickstart, call it with the official SDKs, read usage,
export a bundle, verify it. Then a live provider whose key comes from an
environment variable named in a Secret manifest.

Every wait is bounded; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import (
    CLI_BIN,
    OPENAI_KEYS,
    PROMPT_MARKER,
    REPO,
    Mocks,
    Pki,
    base_providers,
    doc,
    new_corr,
    run,
    to_yaml,
    wait_until,
)

QUICKSTART = REPO / "examples" / "quickstart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Local:
    """One `kubectl-tollgate local` process and what it printed."""

    def __init__(self, manifests: Path, data: Path, env: dict[str, str] | None = None):
        self.data = data
        self.log_out = data.parent / f"{data.name}.stdout"
        self.log_err = data.parent / f"{data.name}.stderr"
        self.api_port, admin, recorder = free_port(), free_port(), free_port()
        self.recorder_port, self.admin_port = recorder, admin
        cmd = [
            str(CLI_BIN), "local", "--manifests", str(manifests), "--data-dir", str(data),
            "--listen", f"127.0.0.1:{self.api_port}", "--admin-listen", f"127.0.0.1:{admin}",
            "--recorder-listen", f"127.0.0.1:{recorder}",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log_out, "w"), stderr=open(self.log_err, "w"),
            env={**os.environ, **(env or {})},
        )
        wait_until(lambda: "ready" in self.stdout() or self.proc.poll() is not None, 30, what="local mode ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"local mode exited {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()}")

    def stdout(self) -> str:
        return self.log_out.read_text() if self.log_out.exists() else ""

    def stderr(self) -> str:
        return self.log_err.read_text() if self.log_err.exists() else ""

    def exported(self, name: str) -> str:
        m = re.search(rf"^export {name}=(\S+)$", self.stdout(), re.M)
        assert m, f"local mode did not print an export line for {name}:\n{self.stdout()}"
        return m.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)


def cli(*args: str) -> subprocess.CompletedProcess:
    return run([str(CLI_BIN), *args], timeout=60)


def test_readme_flow_local_sdk_usage_export_verify(binaries, tmp_path: Path) -> None:
    local = Local(QUICKSTART, tmp_path / "data")
    openai_url = local.exported("OPENAI_BASE_URL")
    anthropic_url = local.exported("ANTHROPIC_BASE_URL")
    assert openai_url == f"http://127.0.0.1:{local.api_port}/v1"
    assert anthropic_url == f"http://127.0.0.1:{local.api_port}"

    # The SDKs need some key; the gateway drops it.
    oa = openai.OpenAI(base_url=openai_url, api_key="sk-anything", max_retries=0)
    # The app names its end user as each API does; receipts keep only a keyed hash.
    end_user = f"end-user-{uuid.uuid4().hex}"
    chat = oa.chat.completions.create(model="gpt-4o-mini", user=end_user, messages=[{"role": "user", "content": f"hi {PROMPT_MARKER}"}])
    assert chat.choices[0].message.content and chat.usage.total_tokens > 0
    chunks = list(oa.chat.completions.create(model="mini", stream=True, messages=[{"role": "user", "content": f"stream {PROMPT_MARKER}"}]))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    emb = oa.embeddings.create(model="text-embedding-3-small", input=f"embed {PROMPT_MARKER}")
    assert len(emb.data[0].embedding) > 0
    with pytest.raises(openai.PermissionDeniedError):
        oa.chat.completions.create(model="gpt-5-not-allowed", messages=[{"role": "user", "content": "x"}])

    an = anthropic.Anthropic(base_url=anthropic_url, api_key="sk-ant-anything", max_retries=0)
    msg = an.messages.create(model="claude-haiku-4-5", max_tokens=64, metadata={"user_id": end_user},
                             messages=[{"role": "user", "content": f"hello {PROMPT_MARKER}"}])
    assert msg.content[0].text and msg.usage.output_tokens > 0
    with an.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": f"s {PROMPT_MARKER}"}]) as s:
        text = "".join(s.text_stream)
    assert text

    # Usage is readable while local mode runs; shipping is asynchronous.
    def allowed_requests() -> int:
        proc = cli("usage", "--local", str(local.data), "--by", "namespace,model", "-o", "json")
        if proc.returncode != 0:
            return 0
        return json.loads(proc.stdout)["total"]["requests"]

    wait_until(lambda: allowed_requests() >= 5, 15, what="5 requests in usage")
    # The answer says how fresh it is: local mode's one stream is open while it runs.
    proc = cli("usage", "--local", str(local.data), "-o", "json")
    freshness = json.loads(proc.stdout)["freshness"]
    assert freshness["open_streams"] == 1 and freshness["newest_record_at"] and freshness["quietest_open_stream_since"], freshness
    proc = cli("usage", "--local", str(local.data))
    assert re.search(r"^as of \S+: newest record \S+ \(", proc.stdout, re.M), proc.stdout

    # Usage by caller: the end user's two calls under HMAC-SHA256(caller key, id).
    caller_key = bytes.fromhex((local.data / "caller.key").read_text().strip())
    expected_hash = hmac.new(caller_key, end_user.encode(), hashlib.sha256).hexdigest()
    proc = cli("usage", "--local", str(local.data), "--by", "caller", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    by_caller = {row["caller"]: row["requests"] for row in json.loads(proc.stdout)["rows"]}
    assert by_caller.get(expected_hash) == 2, by_caller
    proc = cli("usage", "--local", str(local.data), "--by", "caller")
    assert proc.returncode == 0 and "CALLER" in proc.stdout and expected_hash in proc.stdout, proc.stdout

    # doctor: healthy while local mode runs (the open stream is only a warning).
    proc = cli("doctor", "--manifests", str(QUICKSTART), "--data-dir", str(local.data),
               "--recorder", f"http://127.0.0.1:{local.recorder_port}",
               "--gateway-admin", f"http://127.0.0.1:{local.admin_port}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "recorder" in proc.stdout
    assert re.search(r"^ok +provider keys +no provider keys", proc.stdout, re.M), proc.stdout

    assert local.stop() == 0, local.stderr()
    assert "closed" in local.stdout()

    bundle = tmp_path / "bundle.json"
    proc = cli("bundle", "export", "--local", str(local.data), "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    anchor = local.data / "trust-anchor.yaml"
    proc = cli("verify", str(bundle), "--trust-anchor", str(anchor))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Verdict: PASS" in proc.stdout
    assert "(0 open)" in proc.stdout, "Ctrl-C must leave a closed stream"
    # Which guards ran on the receipts, and what they found.
    guards = re.search(r"model_allowlist: (\d+) passed, (\d+) denied", proc.stdout)
    assert guards and int(guards[1]) >= 5 and int(guards[2]) == 1, proc.stdout

    # With local mode stopped, doctor reports the recorder and exits 1.
    proc = cli("doctor", "--data-dir", str(local.data), "--recorder", f"http://127.0.0.1:{local.recorder_port}")
    assert proc.returncode == 1 and "FAIL  recorder" in proc.stdout, proc.stdout

    # A bundle checked against someone else's anchor fails.
    other = tmp_path / "other"
    other_local = Local(QUICKSTART, other)
    assert other_local.stop() == 0
    proc = cli("verify", str(bundle), "--trust-anchor", str(other / "trust-anchor.yaml"))
    assert proc.returncode != 0 and "FAIL" in proc.stdout

    # Nothing private was stored or logged.
    for path in [*local.data.rglob("*"), local.log_out, local.log_err, bundle]:
        if path.is_file():
            data = path.read_bytes()
            assert PROMPT_MARKER.encode() not in data, f"prompt text found in {path}"
            assert end_user.encode() not in data, f"the end-user id was written to {path}"


def test_live_provider_key_comes_from_the_environment(binaries, tmp_path: Path, pki: Pki, mocks: Mocks) -> None:
    # The shared mock's privacy sweep (test_sdk.py) checks that upstream only
    # ever saw the suite's injected keys, so the environment carries one of them.
    key = OPENAI_KEYS["key-a"]
    docs = [d for d in base_providers(pki, mocks) if d["kind"] != "Secret"]
    docs += [
        doc("Secret", "openai-keys", api_version="v1", stringData={"key-a": "${TG_LOCAL_OPENAI_KEY}", "key-b": "${TG_LOCAL_OPENAI_KEY}"}),
        doc("Secret", "anthropic-keys", api_version="v1", stringData={"key-a": "${TG_LOCAL_ANTHROPIC_KEY}"}),
        doc("EgressPolicy", "default", {"mode": "enforce", "allow": [{"providerRef": "openai-mock", "models": ["gpt-4o-mini"]}]}),
    ]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "all.yaml").write_text(to_yaml(docs))

    # A key the manifests name but the environment lacks: local mode refuses to start.
    proc = subprocess.run(
        [str(CLI_BIN), "local", "--manifests", str(manifests), "--data-dir", str(tmp_path / "refused"),
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
         "--recorder-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("TG_LOCAL_")},
    )
    assert proc.returncode != 0 and "TG_LOCAL_OPENAI_KEY" in proc.stderr, proc.stderr

    local = Local(manifests, tmp_path / "data", env={"TG_LOCAL_OPENAI_KEY": key, "TG_LOCAL_ANTHROPIC_KEY": "sk-ant-x"})
    corr = new_corr()
    oa = openai.OpenAI(base_url=local.exported("OPENAI_BASE_URL"), api_key="sk-client-dropped", max_retries=0)
    chat = oa.chat.completions.create(model="gpt-4o-mini", user=corr, messages=[{"role": "user", "content": f"live {PROMPT_MARKER}"}])
    assert chat.choices[0].message.content
    seen = mocks.primary.wait_for(corr, "request")
    assert seen["headers"].get("authorization") == f"Bearer {key}"

    # The gateway reports its keys' health to the recorder (positions, never
    # values), which sums the reports for the operator's LLMProvider status.
    token = (local.data / "local-token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{local.recorder_port}/v1/key-health",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        health = json.loads(answer.read())
    assert health["providers"] == [{"provider": "openai-mock", "keys": [
        {"index": 0, "gateways": 1, "refused_by": 0}, {"index": 1, "gateways": 1, "refused_by": 0}]}], health
    assert local.stop() == 0, local.stderr()
    for path in [*local.data.rglob("*"), local.log_out, local.log_err]:
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data, f"the provider key was written to {path}"
            assert PROMPT_MARKER.encode() not in data, f"prompt text found in {path}"


def test_sigkill_mid_request_leaves_a_forward_decision_the_verifier_reports(
    binaries, tmp_path: Path, pki: Pki, mocks: Mocks
) -> None:
    """A prompt that reached the provider leaves a signed trace even when the
    whole process is killed before the answer: the forward decision is in the
    spool (written before forwarding, no fsync needed), a restart ships it, and
    the verifier reports the request as forwarded with an unknown outcome."""
    key = OPENAI_KEYS["key-a"]
    docs = [d for d in base_providers(pki, mocks) if d["kind"] != "Secret"]
    docs += [
        doc("Secret", "openai-keys", api_version="v1", stringData={"key-a": key, "key-b": key}),
        doc("Secret", "anthropic-keys", api_version="v1", stringData={"key-a": "sk-ant-x"}),
        doc("EgressPolicy", "default", {"mode": "enforce", "allow": [{"providerRef": "openai-mock", "models": ["gpt-4o-mini", "slow-stream"]}]}),
    ]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "all.yaml").write_text(to_yaml(docs))
    data = tmp_path / "data"

    local = Local(manifests, data)
    oa = openai.OpenAI(base_url=local.exported("OPENAI_BASE_URL"), api_key="sk-client-dropped", max_retries=0)
    done = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one that ends"}])
    assert done.choices[0].message.content
    corr = new_corr()
    stream = oa.chat.completions.create(model="slow-stream", stream=True, user=corr,
                                        messages=[{"role": "user", "content": f"cut {PROMPT_MARKER}"}])
    next(iter(stream))
    mocks.primary.wait_for(corr, "request")  # the prompt reached the provider
    local.proc.kill()  # SIGKILL: no drain, no receipt, no close record
    local.proc.wait(10)

    spool = [json.loads(line) for f in (data / "spool").glob("*.jsonl") for line in f.read_text().splitlines() if line.strip()]
    records = [(line.get("envelope") or {}).get("record") or {} for line in spool]
    decisions = [r["decision"]["decision"] for r in records if "decision" in r]
    linked = {r["receipt"]["body"].get("decision_id") for r in records if "receipt" in r}
    pending = [d for d in decisions if d["id"] not in linked]
    assert len(decisions) == 2 and len(pending) == 1, decisions
    assert (pending[0]["model"], pending[0]["provider"], pending[0]["attempt"]) == ("slow-stream", "openai-mock", 0)

    # A restart ships what the killed process left; the export verifies with
    # the killed stream open and its request reported, not hidden.
    again = Local(manifests, data)

    def shipped() -> bool:
        proc = cli("usage", "--local", str(data), "-o", "json")
        return proc.returncode == 0 and json.loads(proc.stdout)["total"]["requests"] >= 1

    try:
        wait_until(shipped, 20, what="the killed process's receipts shipped")
    finally:
        assert again.stop() == 0, again.stderr()
    bundle = tmp_path / "bundle.json"
    proc = cli("bundle", "export", "--local", str(data), "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    proc = cli("verify", str(bundle), "--trust-anchor", str(data / "trust-anchor.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "forwarded, outcome unknown" in proc.stdout and pending[0]["id"] in proc.stdout, proc.stdout
    assert "Forwarded:    1 request attempt(s)" in proc.stdout, proc.stdout
    proc = cli("verify", str(bundle), "--trust-anchor", str(data / "trust-anchor.yaml"), "--require-closed")
    assert proc.returncode == 1, proc.stdout
    for path in [*data.rglob("*"), bundle]:
        if path.is_file():
            assert PROMPT_MARKER.encode() not in path.read_bytes(), f"prompt text found in {path}"
