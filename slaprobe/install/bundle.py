"""The runtime bundle: the agent's packages installed once on the installer's side, one archive for every host.

Installing with pip on each host costs ~11 CPU-seconds per host (resolving,
unpacking wheels, byte-compiling), multiplied by the fleet. Instead the
installer builds the agent's ``site-packages`` once, locally, from the
wheelhouse::

    pip install --target SITE --no-index --find-links WHEELHOUSE --no-compile slaprobe-*.whl
    python -m compileall -j0 --invalidation-mode checked-hash SITE

and packs it as a gzipped tar archive (``tar -xzf`` is on every host, and
gzip unpacks ~10x faster than xz for 15% more bytes). On a host the archive
is checked (SHA-256), unpacked into ``PREFIX/runtime/KEY/`` and a bare venv
(``python3 -m venv --without-pip``) is pointed at it by one ``.pth`` line, so
the host does almost no CPU work. See :data:`UNPACK` for the host's side.

The bytecode is compiled with checked-hash invalidation: valid whatever
mtimes the files get when unpacked, and recompiled in memory if someone
edits a source file on the host. pip itself is left out: only sqlite-utils'
``install`` command uses it, which no agent runs (4 MB less per host).

**Which hosts can use it.** The bundle holds compiled extensions and
bytecode for the interpreter that built it, so it is built only when the
wheelhouse is for this interpreter, and a host takes it only when its
``python3`` has the same implementation and minor version (the bytecode
cache tag, e.g. ``cpython-311``), the same machine (``uname -m``) and a C
library new enough for every manylinux wheel in it (:func:`fits`). Other
hosts fall back to installing with pip on the host from the uploaded
wheelhouse (which must then be for their Python: ``--wheelhouse DIR``).
Cross-building with ``pip --target --python-version --platform`` was not
chosen: it needs wheels for the other Python in the wheelhouse anyway, it
cannot byte-compile for an interpreter that is not here, and the result
could not be smoke-tested before it reaches hosts.

Bundles are cached in ``$XDG_CACHE_HOME/slaprobe/bundle/KEY.tar.gz`` (with
``KEY.json``), KEY hashing the wheels' hashes, the interpreter and the
format, so a warm cache costs nothing and every host of a run gets the same
archive.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slaprobe.install.errors import InstallError
from slaprobe.install.wheelhouse import Wheelhouse, _file_sha256

FORMAT = 1  # bump when the archive's layout or build changes
KEEP = 3  # cached bundles kept
META = ".slaprobe-bundle.json"  # in the archive's root: what the host needs to finish the job
PTH = "slaprobe-runtime.pth"  # in the venv's site-packages: the one line pointing at the runtime
LEFT_OUT = ("pip",)  # top-level packages the agent never imports


@dataclass(frozen=True)
class BundleTarget:
    """The interpreter and platform a bundle is built for (this one)."""

    python: str  # "3.11"
    cache_tag: str  # "cpython-311": implementation + minor version, as in __pycache__ names
    machine: str  # "x86_64"
    glibc: tuple[int, int] | None  # the oldest glibc every wheel runs on; None: no manylinux wheel
    libc_local_only: bool = False  # a wheel built here for plain "linux": only this exact glibc will do


@dataclass(frozen=True)
class Bundle:
    path: Path  # the .tar.gz
    key: str  # names the runtime directory on hosts; same inputs, same key
    sha256: str  # of the archive's bytes, checked on the host before unpacking
    size: int
    version: str  # slaprobe's
    target: BundleTarget
    build_s: float = 0.0  # 0 when taken from the cache


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slaprobe" / "bundle"


_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")


def _glibc_of_tag(tag: str) -> tuple[int, int] | None:
    for legacy, v in _MANYLINUX_LEGACY.items():
        if tag.startswith(legacy + "_"):
            return v
    m = _MANYLINUX.match(tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def local_glibc() -> tuple[int, int] | None:
    return _parse_glibc(_confstr_libc())


def _confstr_libc() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None


def _parse_glibc(text: str | None) -> tuple[int, int] | None:
    """``"glibc 2.36"`` (``os.confstr("CS_GNU_LIBC_VERSION")``) → (2, 36); None for anything else (musl)."""
    m = re.match(r"^glibc (\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def target_for(wh: Wheelhouse) -> BundleTarget | None:
    """What a bundle built here from ``wh`` runs on, or None when ``wh`` is not for this interpreter."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    import platform

    if wh.python != here or wh.machine != platform.machine() or sys.implementation.cache_tag is None:
        return None
    need: tuple[int, int] | None = None
    local_only = False
    for name in wh.wheels:
        if name.startswith("pip-"):
            continue
        plat = name[:-4].split("-")[-1]
        if plat == "any":
            continue
        if any(t.startswith("musllinux") for t in plat.split(".")):
            return None  # a wheelhouse for musl hosts is not built on this glibc machine
        levels = [g for t in plat.split(".") if (g := _glibc_of_tag(t)) is not None]
        if levels:
            least = min(levels)
            need = least if need is None else max(need, least)
        else:  # "linux_x86_64": built from source here, against this glibc
            local_only = True
    if local_only:
        need = local_glibc()
    return BundleTarget(here, sys.implementation.cache_tag, platform.machine(), need, local_only)


def fits(target: BundleTarget, host: Mapping[str, Any]) -> str | None:
    """None if a bundle for ``target`` runs on ``host`` (the installer's preflight of it), else why not.

    ``host`` needs ``python`` ([3, 11]), ``cache_tag`` ("cpython-311"), ``machine`` (``uname -m``),
    ``libc`` (``os.confstr("CS_GNU_LIBC_VERSION")``: "glibc 2.36", None on musl) and ``tar`` (bool).
    """
    py = ".".join(str(x) for x in host["python"][:2])
    if not host.get("tar", True):
        return "it has no tar"
    if host.get("cache_tag") != target.cache_tag:
        return f"its python3 is {host.get('cache_tag') or py}, the bundle is for {target.cache_tag}"
    if host["machine"] != target.machine:
        return f"it is {host['machine']}, the bundle is for {target.machine}"
    if target.glibc is not None:
        libc = _parse_glibc(host.get("libc"))
        if libc is None:
            return (
                f"it has no glibc ({host.get('libc') or 'musl?'}), the bundle needs glibc {_v(target.glibc)}"
            )
        if libc < target.glibc or (target.libc_local_only and libc != target.glibc):
            want = "exactly" if target.libc_local_only else "at least"
            return f"it has glibc {_v(libc)}, the bundle needs {want} glibc {_v(target.glibc)}"
    return None


def _v(t: tuple[int, int]) -> str:
    return f"{t[0]}.{t[1]}"


def key_of(wh: Wheelhouse, target: BundleTarget) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, LEFT_OUT, target.cache_tag, target.machine, target.glibc]).encode())
    for name, digest in sorted(wh.wheels.items()):
        if not name.startswith("pip-"):
            h.update(f"{name}\0{digest}\0".encode())
    return f"{wh.version}-{h.hexdigest()[:16]}"


def ensure(wh: Wheelhouse, root: Path | None = None) -> Bundle | None:
    """The bundle for ``wh``: from the cache, else built now (~10 s); None if ``wh`` is not for this Python."""
    target = target_for(wh)
    if target is None:
        return None
    root = root or cache_root()
    key = key_of(wh, target)
    root.mkdir(parents=True, exist_ok=True)
    # One build at a time per key, also across installer processes: the second one gets a cache hit.
    with (root / f".{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached(wh, target, root, key) or _build(wh, target, root, key)


def _cached(wh: Wheelhouse, target: BundleTarget, root: Path, key: str) -> Bundle | None:
    archive, meta = root / f"{key}.tar.gz", root / f"{key}.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    # Hashed again (0.1 s): a damaged cache entry would be refused by every host.
    if not archive.exists() or _file_sha256(archive) != info.get("sha256"):
        return None
    os.utime(meta)  # most recently used: pruned last
    return Bundle(archive, key, info["sha256"], info["size"], wh.version, target)


def _build(wh: Wheelhouse, target: BundleTarget, root: Path, key: str) -> Bundle:
    archive, meta = root / f"{key}.tar.gz", root / f"{key}.json"
    meta.unlink(missing_ok=True)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        site = tmp / "site"
        _pip_target(wh, site)
        for name in LEFT_OUT:
            shutil.rmtree(site / name, ignore_errors=True)
            for d in site.glob(f"{name}-*.dist-info"):
                shutil.rmtree(d)
        shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with this machine's interpreter path
        scripts = _console_scripts(site)
        (site / META).write_text(
            json.dumps({"key": key, "version": wh.version, "scripts": scripts, "target": target.cache_tag})
        )
        # Errors are not fatal (as with pip): a file that does not compile is compiled, and fails, on import.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "checked-hash",
             "-s", str(site), "-p", "/", str(site)],
            capture_output=True,
        )  # fmt: skip
        part = tmp / "bundle.tar.gz"
        _pack(site, part)
        digest = _file_sha256(part)
        size = part.stat().st_size
        part.rename(archive)  # the archive first: the .json is what makes the entry valid
        _write_atomic(meta, json.dumps({"sha256": digest, "size": size, "key": key, "version": wh.version}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, KEEP)
    return Bundle(archive, key, digest, size, wh.version, target, time.monotonic() - t0)


def _pip_target(wh: Wheelhouse, site: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wh.dir), "--target", str(site), "--no-compile", "--no-warn-script-location",
         str(wh.dir / wh.slaprobe_wheel)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if r.returncode != 0:
        raise InstallError(f"building the runtime bundle failed: {r.stderr.strip()[-2000:]}")


def _console_scripts(site: Path) -> dict[str, str]:
    """slaprobe's own console scripts (``name = module:function``), from its dist-info."""
    out: dict[str, str] = {}
    for ep in site.glob("slaprobe-*.dist-info/entry_points.txt"):
        section = ""
        for line in ep.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[console_scripts]" and "=" in line:
                name, _, ref = line.partition("=")
                out[name.strip()] = ref.strip()
    if "slaprobe" not in out:
        raise InstallError("building the runtime bundle: slaprobe's wheel declares no `slaprobe` script")
    return out


def _pack(site: Path, out: Path) -> None:
    """A gzipped tar of ``site``'s contents: sorted, owned by root, modes 0755/0644 (0755 if executable)."""

    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mode = 0o755 if ti.isdir() or ti.mode & 0o100 else 0o644
        return ti

    with tarfile.open(out, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(site):
            dirnames.sort()
            for n in sorted(filenames) + dirnames:
                p = Path(dirpath) / n
                tar.add(p, arcname=str(p.relative_to(site)), recursive=False, filter=norm)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.rename(path)


def _prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` most recently used bundles (~20 MB each); drop leftovers of killed builds."""
    metas = sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in metas[keep:]:
        old.unlink(missing_ok=True)
        (root / (old.name[: -len(".json")] + ".tar.gz")).unlink(missing_ok=True)
        (root / f".{old.name[: -len('.json')]}.lock").unlink(missing_ok=True)
    live = {m.name[: -len(".json")] for m in metas[:keep]}
    stale = time.time() - 3600
    for p in root.iterdir():
        if p.name.endswith(".tar.gz") and p.name.removesuffix(".tar.gz") not in live:
            p.unlink(missing_ok=True)
        elif p.name.startswith(".") and p.is_dir() and p.stat().st_mtime < stale:
            shutil.rmtree(p, ignore_errors=True)  # the build directory of a killed run


# Runs on the host with its python3 (stdin). argv: prefix, key, sha256 of the archive, version.
# Exit 3: the archive is missing or damaged (upload it again). Prints what it did, as JSON.
UNPACK = r"""
import hashlib, json, os, shutil, subprocess, sys, sysconfig, venv
prefix, key, digest, version = sys.argv[1:5]
PTH = "@PTH@"
META = "@META@"
os.umask(0o022)
archive = f"{prefix}/bundles/{key}.tar.gz"
runtime = f"{prefix}/runtime"
dest = f"{runtime}/{key}"
did = {"unpacked": False, "venv": False}
if not os.path.isdir(dest):
    h = hashlib.sha256()
    try:
        with open(archive, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        print("the bundle archive is not on the host", file=sys.stderr)
        sys.exit(3)
    if h.hexdigest() != digest:
        os.unlink(archive)
        print("the uploaded bundle archive is damaged (removed)", file=sys.stderr)
        sys.exit(3)
    part = f"{runtime}/.{key}.part"
    shutil.rmtree(part, ignore_errors=True)  # what an interrupted unpack left
    os.makedirs(part)
    r = subprocess.run(["tar", "-xzf", archive, "-C", part, "--no-same-owner"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("unpacking the bundle failed: " + r.stderr.strip()[-1000:])
    os.rename(part, dest)
    did["unpacked"] = True
meta = json.load(open(f"{dest}/{META}"))
# The venv: the host's python3 and nothing in its site-packages but our .pth.
vdir = f"{prefix}/venv"
py = f"{vdir}/bin/python"
site = sysconfig.get_path("purelib", "venv", vars={"base": vdir, "platbase": vdir})
if not (os.path.exists(py) and os.path.isdir(site) and set(os.listdir(site)) <= {PTH, "__pycache__"}):
    shutil.rmtree(vdir, ignore_errors=True)  # missing, half made, or from an install with pip
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(vdir)
    did["venv"] = True
# Smoke test before switching: the new runtime imports, native extensions included, and is the version wanted.
r = subprocess.run([py, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import slaprobe, grpc, "
                    "cryptography.hazmat.bindings._rust, google.protobuf, yaml; print(slaprobe.__version__)", dest],
                   capture_output=True, text=True)
if r.returncode != 0 or r.stdout.strip() != version:
    sys.exit(f"the new runtime does not work on this host: {(r.stderr or r.stdout).strip()[-1500:]}")
def put(path, text, mode):
    tmp = path + ".part"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
for name, ref in sorted(meta["scripts"].items()):
    mod, _, fn = ref.partition(":")
    shebang = f"#!{py}\n" if len(py) < 120 else f"#!/bin/sh\n'''exec' \"{py}\" \"$0\" \"$@\"\n' '''\n"
    put(f"{vdir}/bin/{name}", f"{shebang}# Written by `slaprobe agent install`.\nimport sys\n"
        f"from {mod} import {fn.split('.')[0]}\nsys.exit({fn}())\n", 0o755)
put(f"{site}/{PTH}", dest + "\n", 0o644)  # the switch: atomic, the last step
try:
    os.unlink(archive)
except FileNotFoundError:
    pass
did["version"] = r.stdout.strip()
print(json.dumps(did))
""".replace("@PTH@", PTH).replace("@META@", META)
