"""Fixtures for the SDK suite: binaries, a test PKI, mock upstreams, manifests,
compiled configs and running gateways.

Everything listens on 127.0.0.1 and lives in pytest's temporary directory.
Every wait is bounded; nothing here retries a request to make a test pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
if not TARGET_DIR.is_absolute():
    TARGET_DIR = REPO / TARGET_DIR
BIN_DIR = TARGET_DIR / "debug"
GATEWAY_BIN = BIN_DIR / "tollgate-gateway"
CLI_BIN = BIN_DIR / "kubectl-tollgate"
MOCK = HERE / "mock_upstream.py"

NAMESPACE = "demo"
POD_UID = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"

# Values the privacy check greps for. Unique per run so that nothing stale matches.
RUN_ID = uuid.uuid4().hex[:12]
PROMPT_MARKER = f"PRIVACYPROBE{RUN_ID}"
COMPLETION_MARKER = f"MOCKANSWER{RUN_ID}"
OPENAI_KEYS = {"key-a": f"sk-upstream-INJECTED-KEY-123456789-{RUN_ID}", "key-b": f"sk-upstream-INJECTED-KEY-ALT-2468-{RUN_ID}"}
ANTHROPIC_KEYS = {"key-a": f"sk-ant-upstream-INJECTED-KEY-987654321-{RUN_ID}"}
# Azure keys are 32 hex digits; the run id keeps them unique.
AZURE_KEYS = {"key-1": f"a2e0{RUN_ID}".ljust(32, "0")[:32]}
AZURE_CLIENT_KEY = "azure-client-key-must-be-dropped"
AZURE_API_VERSION = "2024-10-21"
# Gemini API keys start AIza; the run id keeps them unique.
GEMINI_KEYS = {"key-1": f"AIzaSyMockGeminiKey{RUN_ID}".ljust(39, "Q")[:39]}
GEMINI_CLIENT_KEY = "gemini-client-key-must-be-dropped"
# Bedrock keys are ACCESS_KEY_ID:SECRET_ACCESS_KEY; the app signs with its own pair.
BEDROCK_KEY_ID = f"AKIAMOCK{RUN_ID.upper()}"
BEDROCK_SECRET = f"mockBedrockSecret/{RUN_ID}+SigningKey"
BEDROCK_KEYS = {"key-1": f"{BEDROCK_KEY_ID}:{BEDROCK_SECRET}"}
BEDROCK_CLIENT_KEY_ID = "AKIACLIENTMUSTNOTLEAVE"
BEDROCK_CLIENT_SECRET = "client-bedrock-secret-must-not-leave"
BEDROCK_REGION = "us-east-1"
# Web identity: the projected ServiceAccount token STS accepts, and the role.
STS_TOKEN = f"eyJhbGciOiJSUzI1NiJ9.mock-sa-token-{RUN_ID}.c2ln"
STS_ROLE = "arn:aws:iam::123456789012:role/tollgate-bedrock"
# Google workload identity federation: the pool provider the mock's STS
# exchanges tokens for, and the service account its IAM lets them impersonate.
GCP_POOL = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tollgate/providers/sdk-tests"
GCP_SERVICE_ACCOUNT = "vertex-caller@tollgate-tests.iam.gserviceaccount.com"
# Microsoft Entra workload identity: the tenant and application the mock's
# Entra ID issues Azure OpenAI tokens for.
ENTRA_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_CLIENT_ID = "5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b"
# The app's own Vertex AI token: the gateway must drop it.
VERTEX_CLIENT_TOKEN = "ya29.client-vertex-token-must-not-leave"
OPENAI_CLIENT_KEY = "sk-client-should-be-dropped"
ANTHROPIC_CLIENT_KEY = "sk-ant-client-dropped"
CORR_PREFIX = f"corr{RUN_ID}"

# Loopback only: keep any proxy settings away from the SDKs' HTTP clients.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost"]))

# Prices (micro-USD per million tokens) shared by the manifests and the tests.
OPENAI_PRICING = {"inputPerMillionMicroUSD": 150000, "outputPerMillionMicroUSD": 600000, "cachedInputPerMillionMicroUSD": 75000}
EMBEDDING_PRICING = {"inputPerMillionMicroUSD": 20000}
GEMINI_PRICING = {"inputPerMillionMicroUSD": 300000, "outputPerMillionMicroUSD": 2500000, "cachedInputPerMillionMicroUSD": 75000}
ANTHROPIC_PRICING = {"inputPerMillionMicroUSD": 800000, "outputPerMillionMicroUSD": 4000000, "cachedInputPerMillionMicroUSD": 80000}
# A table with a long-context size and a service tier (every price set written
# out in full, so this dict is the table as the gateway serialises it).
TIERED_PRICING = {
    "inputPerMillionMicroUSD": 1250000, "outputPerMillionMicroUSD": 10000000, "cachedInputPerMillionMicroUSD": 125000,
    "longContext": {"aboveInputTokens": 1000,
                    "inputPerMillionMicroUSD": 2500000, "outputPerMillionMicroUSD": 15000000, "cachedInputPerMillionMicroUSD": 250000},
    "serviceTiers": [{"name": "flex",
                      "inputPerMillionMicroUSD": 625000, "outputPerMillionMicroUSD": 5000000, "cachedInputPerMillionMicroUSD": 62500}],
}


def new_corr() -> str:
    """A correlation id for one request, carried in `user` / `metadata.user_id`."""
    return f"{CORR_PREFIX}-{uuid.uuid4().hex[:10]}"


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- binaries


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    """Builds the gateway and the CLI once (cargo's lock serialises us with
    other builds), unless the caller already did (TOLLGATE_SDK_SKIP_BUILD=1)."""
    if os.environ.get("TOLLGATE_SDK_SKIP_BUILD") != "1":
        proc = run(["cargo", "build", "-p", "tollgate-gateway", "-p", "tollgate-cli"], cwd=REPO, timeout=3600)
        if proc.returncode != 0:
            pytest.fail(f"cargo build failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    for b in (GATEWAY_BIN, CLI_BIN):
        if not b.exists():
            pytest.fail(f"{b} is missing after the build", pytrace=False)
    return {"gateway": GATEWAY_BIN, "cli": CLI_BIN}


# --------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    dir: Path
    ca_pem: str
    other_ca_pem: str
    leaf_cert: Path
    leaf_key: Path
    leaf_der_sha256: str
    leaf_spki_pin: str
    ca_spki_pin: str
    other_spki_pin: str


def _openssl(*args: str, cwd: Path) -> None:
    proc = run(["openssl", *args], cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _spki_pin(cert: Path, cwd: Path) -> str:
    pub = run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], cwd=cwd, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub.encode(), capture_output=True, check=True, cwd=cwd).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a leaf for localhost/127.0.0.1 signed by it, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", "/CN=Tollgate SDK Test CA", *ca_ext, cwd=d)
    _openssl("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.pem", "-days", "3", "-subj", "/CN=Unrelated Test CA", *ca_ext, cwd=d)
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=d)
    leaf_pem = (d / "leaf.pem").read_text()
    leaf_der = ssl.PEM_cert_to_DER_cert(leaf_pem)
    return Pki(
        dir=d,
        ca_pem=(d / "ca.pem").read_text(),
        other_ca_pem=(d / "other-ca.pem").read_text(),
        leaf_cert=d / "leaf.pem",
        leaf_key=d / "leaf.key",
        leaf_der_sha256=hashlib.sha256(leaf_der).hexdigest(),
        leaf_spki_pin=_spki_pin(d / "leaf.pem", d),
        ca_spki_pin=_spki_pin(d / "ca.pem", d),
        other_spki_pin=_spki_pin(d / "other-ca.pem", d),
    )


# --------------------------------------------------------------------------- mock upstreams


class MockServer:
    def __init__(self, pki: Pki, workdir: Path, tag: str, redirect_to: str | None = None, fail_all_429: bool = False):
        self.tag = tag
        self.log_path = workdir / f"mock-{tag}.jsonl"
        self.log_path.touch()
        self.stderr_path = workdir / f"mock-{tag}.stderr"
        cmd = [sys.executable, str(MOCK), "--cert", str(pki.leaf_cert), "--key", str(pki.leaf_key), "--log", str(self.log_path),
               "--tag", tag, "--marker", COMPLETION_MARKER, *(a for k in BEDROCK_KEYS.values() for a in ("--aws-key", k)),
               "--sts-token", STS_TOKEN, "--sts-role", STS_ROLE, "--gcp-pool", GCP_POOL,
               "--gcp-service-account", GCP_SERVICE_ACCOUNT, "--entra-tenant", ENTRA_TENANT, "--entra-client-id", ENTRA_CLIENT_ID]
        if redirect_to:
            cmd += ["--redirect-to", redirect_to]
        if fail_all_429:
            cmd.append("--fail-all-429")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.stderr_path, "w"), text=True)
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(self.proc.stdout.readline() if self.proc.stdout else ""), daemon=True)
        reader.start()
        reader.join(15)
        m = re.search(r"listening port=(\d+)", line_box[0] if line_box else "")
        if not m:
            self.proc.kill()
            raise RuntimeError(f"mock {tag} did not start: {self.stderr_path.read_text()}")
        self.port = int(m.group(1))
        self.base_url = f"https://localhost:{self.port}"

    def records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def requests(self) -> list[dict]:
        return [r for r in self.records() if r.get("event") == "request"]

    def for_corr(self, corr: str, event: str = "request") -> list[dict]:
        return [r for r in self.records() if r.get("corr") == corr and r.get("event") == event]

    def wait_for(self, corr: str, event: str, timeout: float = 5.0) -> dict:
        return wait_until(lambda: (self.for_corr(corr, event) or [None])[0], timeout, what=f"mock {self.tag} event {event} for {corr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Mocks:
    primary: MockServer
    backup: MockServer
    flaky: MockServer
    redirect_target: MockServer

    def all(self) -> list[MockServer]:
        return [self.primary, self.backup, self.flaky, self.redirect_target]


@pytest.fixture(scope="session")
def mocks(pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("mocks")
    started: list[MockServer] = []
    try:
        target = MockServer(pki, d, "redirect-target")
        started.append(target)
        primary = MockServer(pki, d, "primary", redirect_to=target.base_url)
        started.append(primary)
        backup = MockServer(pki, d, "backup")
        started.append(backup)
        flaky = MockServer(pki, d, "flaky", fail_all_429=True)
        started.append(flaky)
        yield Mocks(primary=primary, backup=backup, flaky=flaky, redirect_target=target)
    finally:
        for m in started:
            m.stop()


# --------------------------------------------------------------------------- manifests


def closed_port() -> int:
    """A loopback port nothing listens on (a provider that refuses connections)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc(kind: str, name: str, spec: dict | None = None, api_version: str = "tollgate.dev/v1alpha1", **extra: Any) -> dict:
    d: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        d["spec"] = spec
    d.update(extra)
    return d


def to_yaml(docs: list[dict]) -> str:
    """Multi-document YAML; each document in JSON flow style (valid YAML)."""
    return "".join(f"---\n{json.dumps(d, indent=2)}\n" for d in docs)


def provider(name: str, api: str, base_url: str, models: list[dict], trust_anchor: str, secret: str) -> dict:
    return doc("LLMProvider", name, {
        "api": api,
        "baseURL": base_url,
        "hosts": ["localhost"],
        "credentialsRef": {"secretName": secret, "keys": sorted({"openai-keys": OPENAI_KEYS, "azure-keys": AZURE_KEYS, "gemini-keys": GEMINI_KEYS,
                                                                 "bedrock-keys": BEDROCK_KEYS}.get(secret, ANTHROPIC_KEYS))},
        "models": models,
        "tls": {"trustAnchorRef": trust_anchor},
        "timeouts": {"connectMillis": 3000, "firstByteMillis": 20000, "idleMillis": 10000},
    })


def trust_anchor(name: str, ca_pem: str, pins: list[str] | None = None) -> dict:
    entry: dict[str, Any] = {"host": "localhost", "caBundle": ca_pem}
    if pins:
        entry["spkiPins"] = pins
    return doc("TrustAnchor", name, {"upstream": [entry]})


def secrets() -> list[dict]:
    return [
        doc("Secret", "openai-keys", api_version="v1", stringData=OPENAI_KEYS),
        doc("Secret", "anthropic-keys", api_version="v1", stringData=ANTHROPIC_KEYS),
        doc("Secret", "azure-keys", api_version="v1", stringData=AZURE_KEYS),
        doc("Secret", "gemini-keys", api_version="v1", stringData=GEMINI_KEYS),
        doc("Secret", "bedrock-keys", api_version="v1", stringData=BEDROCK_KEYS),
    ]


def azure_provider(mocks: Mocks) -> dict:
    """An Azure OpenAI provider on the primary mock; its model is served by a
    deployment of another name, which is how Azure SDK clients ask for it."""
    p = provider("azure-mock", "azureOpenai", mocks.primary.base_url, [
        {"name": "gpt-4o-azure", "deployment": "gpt-4o-prod", "pricing": OPENAI_PRICING},
    ], "mock-ca", "azure-keys")
    p["spec"]["azure"] = {"apiVersion": AZURE_API_VERSION}
    return p


def gemini_provider(mocks: Mocks) -> dict:
    """A Gemini API provider on the primary mock: a chat model and an embedder."""
    return provider("gemini-mock", "gemini", mocks.primary.base_url, [
        {"name": "gemini-2.5-flash", "pricing": GEMINI_PRICING},
        {"name": "gemini-embedding-001", "pricing": EMBEDDING_PRICING},
        {"name": "gemini-blocked", "pricing": GEMINI_PRICING},
    ], "mock-ca", "gemini-keys")


def bedrock_provider(mocks: Mocks) -> dict:
    """An Amazon Bedrock provider on the primary mock: Claude, and two models
    that make the mock's streams fail."""
    p = provider("bedrock-mock", "bedrock", mocks.primary.base_url, [
        {"name": "anthropic.claude-3-5-haiku-20241022-v1:0", "pricing": ANTHROPIC_PRICING},
        {"name": "anthropic.claude-blocked-v1:0", "pricing": ANTHROPIC_PRICING},
        {"name": "bedrock.throttled-v1:0", "pricing": ANTHROPIC_PRICING},
        {"name": "bedrock.corrupt-v1:0", "pricing": ANTHROPIC_PRICING},
    ], "mock-ca", "bedrock-keys")
    p["spec"]["aws"] = {"region": BEDROCK_REGION}
    return p


def base_providers(pki: Pki, mocks: Mocks) -> list[dict]:
    """The OpenAI and Anthropic providers on the primary mock, with their trust and keys."""
    m = lambda name, pricing=None, aliases=None: {k: v for k, v in {"name": name, "pricing": pricing, "aliases": aliases}.items() if v is not None}  # noqa: E731
    return [
        provider("openai-mock", "openai", mocks.primary.base_url, [
            m("gpt-4o-mini", OPENAI_PRICING, ["mini"]),
            m("text-embedding-3-small", EMBEDDING_PRICING),
            m("slow-stream", OPENAI_PRICING),
            m("fail-429", OPENAI_PRICING),
            m("redirect-me", OPENAI_PRICING),
            m("close-delimited", OPENAI_PRICING),
            m("stall-mid-stream", OPENAI_PRICING),
            m("reset-mid-stream", OPENAI_PRICING),
            m("huge-headers", OPENAI_PRICING),
            m("gpt-4o-blocked", OPENAI_PRICING),
            m("gpt-tiered", TIERED_PRICING),
        ], "mock-ca", "openai-keys"),
        provider("anthropic-mock", "anthropic", mocks.primary.base_url, [
            m("claude-haiku-4-5", ANTHROPIC_PRICING),
            m("claude-cached", ANTHROPIC_PRICING),
            m("slow-stream", ANTHROPIC_PRICING),
            m("claude-blocked", ANTHROPIC_PRICING),
        ], "mock-ca", "anthropic-keys"),
        azure_provider(mocks),
        gemini_provider(mocks),
        bedrock_provider(mocks),
        trust_anchor("mock-ca", pki.ca_pem),
        *secrets(),
    ]


def main_manifests(pki: Pki, mocks: Mocks) -> list[dict]:
    """The shared gateway: two API styles, TLS variants, a failover pair and a dry-run provider."""
    m = lambda name, pricing=OPENAI_PRICING: {"name": name, "pricing": pricing}  # noqa: E731
    return [
        *base_providers(pki, mocks),
        provider("openai-pinned", "openai", mocks.primary.base_url, [m("gpt-pinned")], "pinned-ok", "openai-keys"),
        provider("openai-badpin", "openai", mocks.primary.base_url, [m("gpt-badpin")], "pinned-wrong", "openai-keys"),
        provider("openai-wrongca", "openai", mocks.primary.base_url, [m("gpt-wrongca")], "other-ca", "openai-keys"),
        provider("openai-flaky", "openai", mocks.flaky.base_url, [m("gpt-failover"), m("gpt-failover-503")], "mock-ca", "openai-keys"),
        provider("openai-dead", "openai", f"https://localhost:{closed_port()}", [m("gpt-failover-connect")], "mock-ca", "openai-keys"),
        provider("openai-backup", "openai", mocks.backup.base_url, [m("gpt-failover"), m("gpt-failover-503"), m("gpt-failover-connect")], "mock-ca", "openai-keys"),
        doc("LLMProvider", "dry", {"api": "dryRun", "models": [m("dry-model")]}),
        trust_anchor("pinned-ok", pki.ca_pem, [pki.leaf_spki_pin]),
        trust_anchor("pinned-wrong", pki.ca_pem, [pki.other_spki_pin]),
        trust_anchor("other-ca", pki.other_ca_pem),
        doc("EgressPolicy", "default", {
            "allow": [
                {"providerRef": "openai-mock", "models": ["gpt-4o-mini", "text-embedding-*", "slow-stream", "fail-429", "redirect-me", "close-delimited",
                                                          "stall-mid-stream", "reset-mid-stream", "huge-headers", "gpt-tiered"]},
                {"providerRef": "anthropic-mock", "models": ["claude-haiku-4-5", "claude-cached", "slow-stream"]},
                {"providerRef": "azure-mock", "models": ["gpt-4o-azure"]},
                {"providerRef": "gemini-mock", "models": ["gemini-2.5-flash", "gemini-embedding-001"]},
                {"providerRef": "bedrock-mock", "models": ["anthropic.claude-3-5-haiku-*", "bedrock.*"]},
                {"providerRef": "openai-pinned", "models": ["*"]},
                {"providerRef": "openai-badpin", "models": ["*"]},
                {"providerRef": "openai-wrongca", "models": ["*"]},
                {"providerRef": "openai-flaky", "models": ["*"]},
                {"providerRef": "openai-dead", "models": ["*"]},
                {"providerRef": "openai-backup", "models": ["*"]},
                {"providerRef": "dry", "models": ["*"]},
            ],
            "failover": True,
            "guards": {"maxRequestBytes": 65536, "blockSecrets": True},
        }),
    ]


# --------------------------------------------------------------------------- gateways

LISTEN_RE = re.compile(r"tollgate-gateway: listening api=(\S+) admin=(\S+) policy=(\S+) stream=(\S+) threads=\d+ spool=(.+)$", re.M)


class Gateway:
    """One `tollgate-gateway run` process with its own config, creds and spool."""

    def __init__(self, bins: dict[str, Path], workdir: Path, name: str):
        self.bins = bins
        self.name = name
        self.dir = workdir
        self.manifests_dir = workdir / "manifests"
        self.config_path = workdir / "config.json"
        self.creds_dir = workdir / "creds"
        self.spool_dir = workdir / "spool"
        self.stderr_path = workdir / "gateway.stderr"
        self.ca_key = workdir / "ca.key"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        for p in (self.manifests_dir, self.spool_dir):
            p.mkdir(parents=True, exist_ok=True)
        self.ca_key.write_text(os.urandom(32).hex() + "\n")
        self.ca_key.chmod(0o600)  # the gateway refuses key files others can read

    # ---- config
    def compile(self, docs: list[dict], output: Path | None = None) -> subprocess.CompletedProcess:
        for old in self.manifests_dir.glob("*.yaml"):
            old.unlink()
        (self.manifests_dir / "all.yaml").write_text(to_yaml(docs))
        return run([str(self.bins["cli"]), "compile", "--manifests", str(self.manifests_dir), "--namespace", NAMESPACE,
                    "-o", str(output or self.config_path), "--credentials-dir", str(self.creds_dir)])

    def write_config(self, docs: list[dict]) -> str:
        """Compiles into a staging file and renames it into place (atomic); returns the policy hash."""
        staging = self.dir / "config.staging.json"
        proc = self.compile(docs, staging)
        assert proc.returncode == 0, f"compile failed (exit {proc.returncode}): {proc.stderr}"
        policy_hash = config_policy_hash(staging)
        os.replace(staging, self.config_path)
        return policy_hash

    # ---- process
    def start(self, docs: list[dict], extra_args: list[str] | None = None, wait_ready: bool = True,
              wrap: list[str] | None = None, env: dict[str, str] | None = None) -> "Gateway":
        """Starts the gateway; `wrap` goes before its command line (a wrapper that ends in `exec "$@"`);
        `env` is added to the environment it inherits."""
        self.initial_policy = self.write_config(docs)
        cmd = [*(wrap or []), str(self.bins["gateway"]), "run", "--config", str(self.config_path), "--credentials-dir", str(self.creds_dir),
               "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--spool-dir", str(self.spool_dir),
               "--namespace", NAMESPACE, "--service-account", "app", "--pod-name", f"app-{self.name}", "--pod-uid", POD_UID,
               "--pod-label", "app=sdk-tests", "--ca-key-file", str(self.ca_key), *(extra_args or [])]
        env = {**os.environ, **(env or {})}
        # Debug logs of the gateway and its libraries are part of what the
        # privacy sweep reads; RUST_LOG overrides (e.g. trace).
        env.setdefault("RUST_LOG", "debug")
        self.stderr_file = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.stderr_file, stderr=self.stderr_file, env=env, cwd=self.dir)

        def listening() -> re.Match | None:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.name} exited with {self.proc.returncode}:\n{self.stderr()[-4000:]}")
            return LISTEN_RE.search(self.stderr())

        m = wait_until(listening, 30, what=f"gateway {self.name} listening line")
        self.api_addr, self.admin_addr, self.policy_hash, self.stream_id, spool = m.groups()
        self.spool_path = Path(spool.strip())
        if not self.spool_path.is_absolute():
            self.spool_path = self.dir / self.spool_path
        self.api_port = int(self.api_addr.rsplit(":", 1)[1])
        self.admin_port = int(self.admin_addr.rsplit(":", 1)[1])
        if wait_ready:
            self.wait_ready()
        else:
            wait_until(lambda: self.admin_get("/live")[0] == 200, 15, interval=0.1, what=f"gateway {self.name} /live")
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        wait_until(lambda: self.admin_get("/ready")[0] == 200, timeout, interval=0.1, what=f"gateway {self.name} /ready")

    def stop(self, timeout: float = 45) -> int:
        """SIGTERM and wait; returns the exit code (kept for later checks)."""
        if self.proc is None:
            raise AssertionError("gateway was never started")
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.returncode = -9
            self.stderr_file.close()
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # ---- observation
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def admin_get(self, path: str) -> tuple[int, str, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode(errors="replace"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace"), dict(e.headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, "", {}

    def spool_lines(self) -> list[dict]:
        out = []
        text = self.spool_path.read_text() if self.spool_path.exists() else ""
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    # The writer may be mid-line; a complete file never has a partial line.
                    pass
        return out

    def receipts(self) -> list[dict]:
        bodies = []
        for line in self.spool_lines():
            record = (line.get("envelope") or {}).get("record") or {}
            receipt = record.get("receipt")
            if receipt:
                bodies.append(receipt["body"])
        return bodies

    def receipt(self, receipt_id: str, timeout: float = 10) -> dict:
        assert receipt_id, "no x-tollgate-receipt-id header on the response"

        def find() -> dict | None:
            for body in self.receipts():
                if body.get("id") == receipt_id:
                    return body
            return None

        return wait_until(find, timeout, what=f"receipt {receipt_id} in {self.spool_path}")

    # ---- clients
    @property
    def openai_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def openai(self):
        import openai

        return openai.OpenAI(base_url=self.openai_base, api_key=OPENAI_CLIENT_KEY, max_retries=0, timeout=30)

    def azure(self):
        """The openai package's Azure client, pointed at the gateway as at an
        Azure OpenAI resource."""
        import openai

        return openai.AzureOpenAI(azure_endpoint=f"http://127.0.0.1:{self.api_port}", api_key=AZURE_CLIENT_KEY,
                                  api_version=AZURE_API_VERSION, max_retries=0, timeout=30)

    def vertex(self):
        """The Google Gen AI SDK in Vertex AI mode, pointed at the gateway as
        at Vertex AI, with the app's own project and token (which the gateway
        replaces)."""
        from google import genai
        from google.genai import types
        from google.oauth2.credentials import Credentials

        return genai.Client(vertexai=True, project="app-project", location="us-central1",
                            credentials=Credentials(token=VERTEX_CLIENT_TOKEN),
                            http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30_000))

    def gemini(self):
        """The Google Gen AI SDK's Gemini API client, pointed at the gateway as
        at the Gemini API (no retries: every call is one request)."""
        from google import genai
        from google.genai import types

        return genai.Client(api_key=GEMINI_CLIENT_KEY, http_options=types.HttpOptions(
            base_url=f"http://127.0.0.1:{self.api_port}", api_version="v1beta", timeout=30_000))

    def bedrock(self):
        """boto3's bedrock-runtime client, pointed at the gateway as at the
        Bedrock runtime endpoint and signing with the app's own keys."""
        import boto3
        from botocore.config import Config

        return boto3.client("bedrock-runtime", region_name=BEDROCK_REGION, endpoint_url=f"http://127.0.0.1:{self.api_port}",
                            aws_access_key_id=BEDROCK_CLIENT_KEY_ID, aws_secret_access_key=BEDROCK_CLIENT_SECRET,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=30, connect_timeout=5))

    def anthropic(self):
        import anthropic

        return anthropic.Anthropic(base_url=self.anthropic_base, api_key=ANTHROPIC_CLIENT_KEY, max_retries=0, timeout=30)


def config_policy_hash(path: Path) -> str:
    cfg = json.loads(path.read_text())
    return cfg.get("policyHash") or cfg.get("policy_hash") or ""


class GatewayFactory:
    def __init__(self, bins: dict[str, Path], root: Path):
        self.bins = bins
        self.root = root
        self.started: list[Gateway] = []

    def create(self, name: str) -> Gateway:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=False)
        gw = Gateway(self.bins, d, name)
        self.started.append(gw)
        return gw

    def start(self, name: str, docs: list[dict], extra_args: list[str] | None = None, wait_ready: bool = True,
              env: dict[str, str] | None = None) -> Gateway:
        return self.create(name).start(docs, extra_args, wait_ready, env=env)


@pytest.fixture(scope="session")
def gateways(binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    factory = GatewayFactory(binaries, tmp_path_factory.mktemp("gateways"))
    yield factory
    for gw in factory.started:
        if gw.proc is not None and gw.returncode is None:
            try:
                gw.stop(timeout=20)
            finally:
                gw.kill()


@pytest.fixture(scope="session")
def gw(gateways: GatewayFactory, pki: Pki, mocks: Mocks) -> Gateway:
    """The shared gateway most tests talk to."""
    return gateways.start("main", main_manifests(pki, mocks))
