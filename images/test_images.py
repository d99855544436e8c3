"""The image archives of `make images` agree with the Dockerfile and the chart.

Run with `make images-test` (python3 -m pytest -q images/test_images.py) after
`make images` (any PROFILE). A missing archive skips its tests, or fails them
when CI is set. The e2e images (pause, app) are checked when present, and are
required under CI only with E2E_IMAGES=1. See docs/images.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = Path(os.environ.get("OUT_DIR", REPO / "target" / "images"))
TOLLGATE = ["operator", "recorder", "gateway"]
E2E = ["pause", "app"]
# The tools `tollgate-gateway init-network` execs (gateway/src/egress_rules.rs).
INIT_NETWORK_TOOLS = ["iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"]
LOADER = "lib64/ld-linux-x86-64.so.2"
LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
OCI_LABELS = {
    f"org.opencontainers.image.{k}"
    for k in ("title", "description", "source", "licenses", "version", "revision")
}


# --- the Dockerfile ---------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def parse_stages(text: str) -> dict[str, dict]:
    global_args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current: dict | None = None
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"cannot parse FROM {rest}"
            current = {
                "base": m.group(1),
                "args": {},
                "copy": [],
                "env": {},
                "labels": {},
                "run": [],
                "user": None,
                "workdir": None,
                "entrypoint": None,
            }
            stages[m.group(2) or f"stage{len(stages)}"] = current
            continue
        if current is None:
            if word == "ARG":
                k, _, v = rest.partition("=")
                global_args[k] = v
            continue
        if word == "ARG":
            k, _, v = rest.partition("=")
            current["args"][k] = v
        elif word == "COPY":
            parts = shlex.split(rest)
            flags = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in parts if p.startswith("--")}
            paths = [p for p in parts if not p.startswith("--")]
            current["copy"].append({"from": flags.get("--from"), "src": paths[:-1], "dest": paths[-1],
                                    "flags": flags})
        elif word in ("ENV", "LABEL"):
            target = current["env"] if word == "ENV" else current["labels"]
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                target[k] = v
        elif word == "RUN":
            current["run"].append(rest)
        elif word == "USER":
            current["user"] = rest
        elif word == "WORKDIR":
            current["workdir"] = rest
        elif word == "ENTRYPOINT":
            current["entrypoint"] = json.loads(rest)
    for stage in stages.values():
        stage["global_args"] = global_args
    return stages


STAGES = parse_stages((REPO / "Dockerfile").read_text())


def gateway_uid() -> int:
    text = (REPO / "admission" / "src" / "lib.rs").read_text()
    m = re.search(r"pub const GATEWAY_UID: i64 = (\d+);", text)
    assert m, "GATEWAY_UID not found in admission/src/lib.rs"
    return int(m.group(1))


def expected_user(name: str) -> str:
    uid = gateway_uid() if name == "gateway" else 65532
    return f"{uid}:{uid}"


# --- the chart ----------------------------------------------------------------


def chart_app_version() -> str:
    text = (REPO / "charts" / "tollgate" / "Chart.yaml").read_text()
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, re.M)
    assert m, "no appVersion in Chart.yaml"
    return m.group(1)


def chart_repositories() -> dict[str, str]:
    """Top-level values key -> image.repository (operator, recorder, gateway)."""
    repos: dict[str, str] = {}
    top = None
    for line in (REPO / "charts" / "tollgate" / "values.yaml").read_text().splitlines():
        m = re.match(r"^([A-Za-z][\w-]*):", line)
        if m:
            top = m.group(1)
            continue
        m = re.match(r"^\s+repository:\s*\"?([^\"\s#]+)", line)
        if m and top and top not in repos:
            repos[top] = m.group(1)
    return repos


# --- the archives ---------------------------------------------------------------


class Image:
    def __init__(self, path: Path):
        self.path = path
        with tarfile.open(path) as outer:
            names = outer.getnames()
            assert "manifest.json" in names, f"{path}: no manifest.json"
            manifest = json.load(outer.extractfile("manifest.json"))
            assert len(manifest) == 1, f"{path}: expected one image, got {len(manifest)}"
            self.manifest = manifest[0]
            config_bytes = outer.extractfile(self.manifest["Config"]).read()
            self.config_digest = hashlib.sha256(config_bytes).hexdigest()
            self.config = json.loads(config_bytes)
            assert len(self.manifest["Layers"]) == 1, f"{path}: expected a single layer"
            self.layer_bytes = outer.extractfile(self.manifest["Layers"][0]).read()
        with tarfile.open(fileobj=_bytes_io(self.layer_bytes)) as layer:
            self.members = {m.name.rstrip("/"): m for m in layer.getmembers()}
            self.member_order = [m.name for m in layer.getmembers()]

    @property
    def cfg(self) -> dict:
        return self.config["config"]

    def resolve(self, path: str, depth: int = 0) -> tarfile.TarInfo:
        """The member at absolute `path`, following symlinks inside the layer."""
        assert depth < 16, f"symlink loop at {path}"
        rel = path.lstrip("/")
        assert rel in self.members, f"{path} not in {self.path.name}"
        m = self.members[rel]
        if m.issym():
            target = m.linkname
            if not target.startswith("/"):
                target = os.path.normpath(os.path.join("/", os.path.dirname(rel), target))
            return self.resolve(target, depth + 1)
        return m

    def extract(self, dest: Path) -> Path:
        with tarfile.open(fileobj=_bytes_io(self.layer_bytes)) as layer:
            layer.extractall(dest, filter="fully_trusted")
        return dest


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


_cache: dict[str, Image] = {}


def load(name: str) -> Image:
    path = IMAGES_DIR / f"{name}.tar"
    required = bool(os.environ.get("CI")) and (
        name in TOLLGATE or os.environ.get("E2E_IMAGES") == "1"
    )
    if not path.exists():
        msg = f"{path} missing: run `make images` (E2E images: images/build.sh pause app)"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    if name not in _cache:
        _cache[name] = Image(path)
    return _cache[name]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            roots[name] = load(name).extract(tmp_path_factory.mktemp(f"rootfs-{name}"))
        return roots[name]

    return get


def list_libraries(root: Path, binary: Path) -> str:
    loader = root / LOADER
    assert loader.exists(), f"no loader {LOADER} in the image"
    lib_path = ":".join(str(root / d) for d in LIB_DIRS)
    proc = subprocess.run(
        [str(loader), "--library-path", lib_path, "--list", str(binary)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"{binary}: loader failed: {proc.stdout}{proc.stderr}"
    return proc.stdout


# --- Dockerfile shape ---------------------------------------------------------------


@pytest.mark.parametrize("name", TOLLGATE)
def test_dockerfile_final_stage(name):
    stage = STAGES[name]
    assert stage["base"] == "scratch"
    assert stage["entrypoint"] == [f"/usr/local/bin/tollgate-{name}"]
    assert stage["user"] == expected_user(name)
    assert OCI_LABELS <= set(stage["labels"]), OCI_LABELS - set(stage["labels"])
    # The final stage copies the rootfs recipe's output and the binary, nothing else.
    froms = {c["from"] for c in stage["copy"]}
    assert froms == {f"rootfs-{name}", "build"}, froms
    assert not stage["run"], "a FROM scratch stage cannot RUN"


def test_dockerfile_uses_the_shared_recipe():
    base = STAGES["rootfs-base"]
    assert any(c["src"] == ["images/rootfs.sh"] for c in base["copy"])
    for name in TOLLGATE:
        runs = " ".join(STAGES[f"rootfs-{name}"]["run"])
        assert re.search(rf"tollgate-rootfs\.sh .*--check /out/tollgate-{name} {name} /rootfs", runs), runs


def test_dockerfile_base_images_name_no_registry_host():
    rust = STAGES["build"]["global_args"]["RUST_IMAGE"]
    assert rust == "rust:1.95-bookworm"
    for ref in STAGES["build"]["global_args"].values():
        first = ref.split("/")[0]
        assert "/" not in ref or ("." not in first and ":" not in first), ref


# --- archives vs. Dockerfile ---------------------------------------------------------


@pytest.mark.parametrize("name", TOLLGATE)
def test_config_matches_dockerfile(name):
    img = load(name)
    stage = STAGES[name]
    cfg = img.cfg
    assert cfg.get("Entrypoint") == stage["entrypoint"]
    assert cfg.get("User") == stage["user"]
    assert cfg.get("WorkingDir") == stage["workdir"]
    env = dict(e.split("=", 1) for e in cfg.get("Env", []))
    assert env == stage["env"]
    labels = cfg.get("Labels") or {}
    assert set(labels) == set(stage["labels"])
    for key, value in stage["labels"].items():
        if "${" not in value:
            assert labels[key] == value, key
    tag_version = img.manifest["RepoTags"][0].rpartition(":")[2]
    assert labels["org.opencontainers.image.version"] == tag_version
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])
    assert img.config["os"] == "linux"
    diff_id = hashlib.sha256(img.layer_bytes).hexdigest()
    assert img.config["rootfs"]["diff_ids"] == [f"sha256:{diff_id}"]
    assert img.manifest["Config"] == f"{img.config_digest}.json"


@pytest.mark.parametrize("name", TOLLGATE)
def test_copied_paths_exist_with_the_right_mode(name):
    img = load(name)
    uid = int(img.cfg["User"].split(":")[0])
    for copy in STAGES[name]["copy"]:
        if copy["from"] == "build":
            member = img.members[copy["dest"].lstrip("/")]
            assert member.isfile(), copy["dest"]
            assert stat.S_IMODE(member.mode) == 0o755, oct(member.mode)
            # Owned by root, writable by nobody else: the image user cannot replace it.
            assert (member.uid, member.gid) == (0, 0)
            assert uid != 0 and not member.mode & 0o022
        else:
            assert copy["src"] == ["/rootfs/"] and copy["dest"] == "/", copy
            passwd = img.members["etc/passwd"]
            assert passwd.isfile() and (passwd.uid, stat.S_IMODE(passwd.mode)) == (0, 0o644)
            assert img.members["etc/group"].isfile()
            assert img.members["etc/ssl/certs/ca-certificates.crt"].size > 100_000
            tmp = img.members["tmp"]
            assert tmp.isdir() and stat.S_IMODE(tmp.mode) == 0o1777
            assert img.members[LOADER].issym() or img.members[LOADER].isfile()


@pytest.mark.parametrize("name", TOLLGATE)
def test_layer_is_normalized(name):
    img = load(name)
    epoch = int(
        __import__("datetime").datetime.fromisoformat(img.config["created"].replace("Z", "+00:00")).timestamp()
    )
    assert img.member_order == sorted(img.member_order, key=lambda n: n.encode())
    for m in img.members.values():
        assert m.mtime == epoch, m.name
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
        if not m.issym():
            assert not m.mode & 0o002 or m.name == "tmp", f"{m.name} is world-writable"


@pytest.mark.parametrize("name", TOLLGATE)
def test_minimal_no_shell_or_docs(name):
    img = load(name)
    for path in ("bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh", "usr/sbin/update-ca-certificates"):
        assert path not in img.members, f"{path} in the {name} image"
    for m in img.members:
        assert not m.startswith(("usr/share/doc", "usr/share/man", "usr/share/locale")), m
    has_iptables = "usr/sbin/xtables-nft-multi" in img.members
    assert has_iptables == (name == "gateway")


@pytest.mark.parametrize("name", TOLLGATE)
def test_user_exists_in_passwd(name):
    img = load(name)
    uid, _, gid = img.cfg["User"].partition(":")
    with tarfile.open(fileobj=_bytes_io(img.layer_bytes)) as layer:
        passwd = layer.extractfile("etc/passwd").read().decode()
        group = layer.extractfile("etc/group").read().decode()
    assert any(line.split(":")[2:4] == [uid, gid] for line in passwd.splitlines()), passwd
    assert any(line.split(":")[2] == gid for line in group.splitlines()), group


@pytest.mark.parametrize("name", TOLLGATE)
def test_binary_resolves_libraries_in_rootfs(name, extracted):
    root = extracted(name)
    listing = list_libraries(root, root / "usr/local/bin" / f"tollgate-{name}")
    assert "not found" not in listing, listing
    for line in listing.splitlines():
        if "=>" in line:
            assert line.split("=>")[1].split()[0].startswith(str(root)), line


def test_gateway_init_network_tools(extracted):
    img = load("gateway")
    root = extracted("gateway")
    path = dict(e.split("=", 1) for e in img.cfg["Env"])["PATH"].split(":")
    for tool in INIT_NETWORK_TOOLS:
        found = [d for d in path if f"{d.lstrip('/')}/{tool}" in img.members]
        assert found, f"{tool} not on the image's PATH {path}"
        target = img.resolve(f"{found[0]}/{tool}")
        assert target.isfile() and target.mode & 0o111, f"{tool} -> {target.name} not executable"
        listing = list_libraries(root, root / target.name)
        assert "not found" not in listing, f"{tool}: {listing}"
        # The multi-call binary must answer to the name init-network runs it by.
        proc = subprocess.run(
            [str(root / LOADER), "--library-path", ":".join(str(root / d) for d in LIB_DIRS),
             "--argv0", tool, str(root / target.name), "--version"],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert re.match(rf"{re.escape(tool)} v1\.8\.\d+ \(nf_tables\)", proc.stdout), proc.stdout
    # The extensions the rules use are there (multiport, owner, REJECT, tcp, udp).
    for ext in ("libxt_multiport.so", "libxt_owner.so", "libxt_conntrack.so", "libipt_REJECT.so", "libip6t_REJECT.so",
                "libxt_tcp.so", "libxt_udp.so", "libip6t_icmp6.so"):
        assert f"usr/lib/x86_64-linux-gnu/xtables/{ext}" in img.members, ext


def test_gateway_init_network_applies_rules_in_netns(extracted):
    """`tollgate-gateway init-network` from the image, chrooted into the extracted
    layer in a fresh network namespace, writes the rules with the image's own
    iptables, and a second run changes nothing. Needs root (fails under CI without)."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        msg = "needs root and unshare(1)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    img = load("gateway")
    root = extracted("gateway")
    (root / "dev").mkdir(exist_ok=True)
    (root / "proc").mkdir(exist_ok=True)
    env_path = dict(e.split("=", 1) for e in img.cfg["Env"])["PATH"]
    run = f"chroot {root} /usr/local/bin/tollgate-gateway init-network --gateway-uid 15080 --dns 198.19.0.10 --allow 198.18.0.0/15=443"
    script = (
        f"set -e; mount --rbind /dev {root}/dev; mount -t proc proc {root}/proc; "
        f"{run}; {run}; echo ===; chroot {root} iptables-save; echo ===; chroot {root} ip6tables-save"
    )
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, env={"PATH": env_path},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, v4, v6 = proc.stdout.split("===\n")
    for text in (v4, v6):
        assert "(nf_tables)" in text
        assert text.count("-A OUTPUT -j TOLLGATE_OUTPUT") == 1, text
        assert "-m owner --uid-owner 15080 -j RETURN" in text, text


# --- archives vs. the chart ------------------------------------------------------------


@pytest.mark.parametrize("name", TOLLGATE)
def test_repo_tags_match_chart(name):
    img = load(name)
    repos = chart_repositories()
    assert img.manifest["RepoTags"] == [f"{repos[name]}:{chart_app_version()}"]


def test_chart_version_is_workspace_version():
    import tomllib

    with open(REPO / "Cargo.toml", "rb") as f:
        version = tomllib.load(f)["workspace"]["package"]["version"]
    assert chart_app_version() == version


# --- reproducibility ---------------------------------------------------------------------


def test_rebuild_is_byte_identical(tmp_path):
    """Rebuilding gateway from the same inputs (its binary, the cached .debs, the
    epoch, version and revision recorded in the archive) gives the same bytes."""
    img = load("gateway")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    with tarfile.open(fileobj=_bytes_io(img.layer_bytes)) as layer:
        data = layer.extractfile("usr/local/bin/tollgate-gateway").read()
    (bin_dir / "tollgate-gateway").write_bytes(data)
    labels = img.cfg["Labels"]
    created = __import__("datetime").datetime.fromisoformat(img.config["created"].replace("Z", "+00:00"))
    env = dict(
        os.environ,
        OUT_DIR=str(tmp_path / "out"),
        TOLLGATE_BIN_DIR=str(bin_dir),
        SOURCE_DATE_EPOCH=str(int(created.timestamp())),
        VERSION=labels["org.opencontainers.image.version"],
        REVISION=labels["org.opencontainers.image.revision"],
    )
    subprocess.run([str(REPO / "images" / "build.sh"), "gateway"], env=env, check=True,
                   capture_output=True)
    rebuilt = tmp_path / "out" / "gateway.tar"
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(rebuilt) == digest(img.path)


# --- e2e images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", E2E)
def test_e2e_image(name, extracted):
    img = load(name)
    assert img.manifest["RepoTags"] == [f"tollgate-e2e/{name}:1"]
    busybox = img.members["bin/busybox"]
    assert busybox.isfile() and busybox.mode & 0o111
    applets = ["sh", "sleep"] + (["wget", "nc", "nslookup"] if name == "app" else [])
    for applet in applets:
        assert img.resolve(f"/bin/{applet}").name == "bin/busybox", applet
    argv = img.cfg.get("Entrypoint") or img.cfg.get("Cmd")
    assert argv and argv[0] == "/bin/sh" and "trap" in argv[2]
    root = extracted(name)
    # The shell loop is valid and exits 0 on SIGTERM (run on the host, as in the image).
    proc = subprocess.Popen([str(root / "bin/busybox"), "sh", "-c", argv[2]], start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        # The loop's `sleep` child outlives the shell here (in a container it dies
        # with PID 1); end the whole process group.
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
