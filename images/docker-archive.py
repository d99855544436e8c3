#!/usr/bin/env python3
"""Write a root filesystem as a single-layer image archive, daemonless.

The output is the docker-archive format (`docker save`): manifest.json with
RepoTags, the image config JSON, and one uncompressed layer tar. Both
`ctr images import FILE` and `docker load` accept it.

Everything is reproducible: layer entries are sorted, owned by 0:0 (numeric,
no user names), stamped with SOURCE_DATE_EPOCH, and the JSON is written with
sorted keys, so the same rootfs and arguments give byte-identical archives.

Standard library only. See docs/images.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile
import tempfile

ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fail(msg: str) -> None:
    print(f"docker-archive.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("expected a JSON list of strings")
    return value


def walk_sorted(root: str) -> list[str]:
    """Every path under root, relative, sorted by bytes (so parents come first)."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            paths.append(name if rel == "." else f"{rel}/{name}")
    return sorted(paths, key=os.fsencode)


def write_layer(rootfs: str, out, mtime: int) -> None:
    """Write the rootfs as a tar to the binary file object `out`."""
    seen_inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in walk_sorted(rootfs):
            full = os.path.join(rootfs, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[inode]
                    tar.addfile(info)
                    continue
                seen_inodes[inode] = rel
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                fail(f"{rel}: unsupported file type (only files, dirs, symlinks)")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rootfs", required=True, help="directory to put in the layer")
    p.add_argument("--tag", required=True, action="append", help="repo:tag (repeatable)")
    p.add_argument("--output", required=True, help="archive to write")
    p.add_argument("--entrypoint", type=json_list, help='JSON list, e.g. ["/bin/x"]')
    p.add_argument("--cmd", type=json_list, help="JSON list")
    p.add_argument("--user", default="", help="UID[:GID]")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", type=key_value, action="append", default=[])
    p.add_argument("--label", type=key_value, action="append", default=[])
    p.add_argument("--arch", default=ARCHES.get(platform.machine(), platform.machine()))
    p.add_argument(
        "--epoch",
        type=int,
        default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
        help="mtime of every entry and the config's created time (SOURCE_DATE_EPOCH)",
    )
    args = p.parse_args()

    if not os.path.isdir(args.rootfs):
        fail(f"rootfs {args.rootfs} is not a directory")
    for tag in args.tag:
        repo, sep, ver = tag.rpartition(":")
        if not sep or not repo or not ver or "/" in ver:
            fail(f"tag {tag!r} is not repo:tag")

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".docker-archive-") as tmp:
        layer_path = os.path.join(tmp, "layer.tar")
        with open(layer_path, "wb") as f:
            write_layer(args.rootfs, f, args.epoch)
        diff_id = sha256_file(layer_path)

        created = _rfc3339(args.epoch)
        container_config: dict = {
            "Env": [f"{k}={v}" for k, v in args.env],
            "WorkingDir": args.workdir,
            "Labels": dict(args.label),
        }
        if args.user:
            container_config["User"] = args.user
        if args.entrypoint is not None:
            container_config["Entrypoint"] = args.entrypoint
        if args.cmd is not None:
            container_config["Cmd"] = args.cmd
        config = {
            "architecture": args.arch,
            "os": "linux",
            "created": created,
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [
                {"created": created, "created_by": "images/build.sh (images/rootfs.sh)"}
            ],
        }
        config_bytes = canonical_json(config)
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        layer_name = f"{diff_id}/layer.tar"
        manifest = [{"Config": config_name, "RepoTags": args.tag, "Layers": [layer_name]}]

        partial = os.path.join(tmp, "image.tar")
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, config_name, config_bytes, args.epoch)
            info = tarfile.TarInfo(layer_name)
            info.size = os.path.getsize(layer_path)
            info.mode = 0o644
            info.mtime = args.epoch
            info.uname = info.gname = ""
            with open(layer_path, "rb") as f:
                tar.addfile(info, f)
            add_bytes(tar, "manifest.json", canonical_json(manifest), args.epoch)
        os.replace(partial, args.output)
    print(
        f"docker-archive.py: {args.output}: {', '.join(args.tag)} "
        f"(layer sha256:{diff_id[:12]}, {os.path.getsize(args.output)} bytes)",
        file=sys.stderr,
    )


def _rfc3339(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


if __name__ == "__main__":
    main()
