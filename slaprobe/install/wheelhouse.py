"""The wheelhouse: a wheel of the running slaprobe plus wheels of all its dependencies.

Agents are installed from these files alone (``pip install --no-index``), so
a host without internet access can be installed and every host of a fleet
runs exactly the code the collector host runs. ``pip`` itself is one of the
wheels and is run from its wheel on the host, so the host needs neither pip
nor Debian's ``python3-venv`` (ensurepip): ``python3 -m venv --without-pip``
is in the standard library.

The wheelhouse is built once per version and source content (``pip wheel``
of the source tree alone, then of that wheel's dependencies and pip) into
``$XDG_CACHE_HOME/slaprobe/wheelhouse/VERSION-HASH`` and reused while warm. A directory of prebuilt wheels can be given instead
(``--wheelhouse DIR``), e.g. for hosts of another architecture.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import slaprobe
from slaprobe.install.errors import InstallError

KEEP = 3  # cached wheelhouses kept
_SOURCE_SUFFIXES = (".py", ".proto", ".pyi", ".typed", ".toml", ".sh", ".service", ".md")


@dataclass(frozen=True)
class Wheelhouse:
    dir: Path
    wheels: dict[str, str]  # file name -> sha256
    version: str
    python: str  # "3.11": the Python the binary wheels were built for
    machine: str  # "x86_64"

    @property
    def slaprobe_wheel(self) -> str:
        (name,) = [n for n in self.wheels if n.startswith("slaprobe-")]
        return name

    @property
    def pip_wheel(self) -> str:
        (name,) = [n for n in self.wheels if n.startswith("pip-")]
        return name

    @property
    def total_bytes(self) -> int:
        return sum((self.dir / n).stat().st_size for n in self.wheels)


def source_tree() -> Path | None:
    """The source tree the running slaprobe was imported from (an editable or in-place install)."""
    root = Path(slaprobe.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "slaprobe").is_dir() else None


def source_files(root: Path) -> list[str]:
    """The files a wheel of slaprobe is built from, relative to the source tree."""
    names = ["pyproject.toml", "README.md"]
    for pkg in ("slaprobe", "agent", "collector", "probes", "protos"):
        for p in sorted((root / pkg).rglob("*")):
            if p.is_file() and p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                names.append(str(p.relative_to(root)))
    return names


def source_digest(root: Path) -> str:
    h = hashlib.sha256()
    for n in source_files(root):
        h.update(n.encode() + b"\0" + (root / n).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slaprobe" / "wheelhouse"


def load(dir: Path) -> Wheelhouse:
    wheels = {p.name: _file_sha256(p) for p in sorted(dir.glob("*.whl"))}
    if not any(n.startswith("slaprobe-") for n in wheels):
        raise InstallError(f"{dir}: no slaprobe wheel in the wheelhouse")
    if not any(n.startswith("pip-") for n in wheels):
        raise InstallError(f"{dir}: no pip wheel in the wheelhouse (add one: pip download pip -d {dir})")
    version = next(n for n in wheels if n.startswith("slaprobe-")).split("-")[1]
    py = "".join(t for n in wheels for t in n.split("-")[2:3] if t.startswith("cp3") and t[3:].isdigit())[:5]
    python = f"3.{py[3:]}" if py else f"{sys.version_info.major}.{sys.version_info.minor}"
    return Wheelhouse(dir, wheels, version, python, platform.machine())


def ensure(explicit: Path | None = None) -> Wheelhouse:
    """The wheelhouse to install from: ``explicit``, else the cache entry for this source, built if cold."""
    if explicit is not None:
        return load(explicit)
    root = source_tree()
    if root is None:
        raise InstallError(
            "slaprobe is not running from a source tree, so no wheel of it can be built here:"
            " give a directory of wheels with --wheelhouse DIR"
        )
    key = f"{slaprobe.__version__}-{source_digest(root)}"
    target = cache_root() / key
    if (target / ".complete").exists():
        return load(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        wheel = build_wheel(root, tmp)
        # The dependencies, as the wheel's metadata names them (pip copies the wheel itself), and pip.
        _pip("wheel", "-w", str(tmp), str(wheel), "pip")
        (tmp / ".complete").write_text(key + "\n")
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another run: use that one
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(target.parent, keep=KEEP)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load(target)


def build_wheel(root: Path, out: Path) -> Path:
    """slaprobe's own wheel (no dependencies) from the source tree ``root``, written to ``out``.

    Built from a clean copy of exactly the source files: setuptools reuses the tree's build/
    directory, where a module deleted from the source would live on in the wheel. Where the build
    backend pyproject.toml asks for is already importable here (a development environment), pip
    uses it instead of installing it into a fresh isolated environment first (half the ~10 s).
    """
    src = Path(tempfile.mkdtemp(prefix=".slaprobe-src-", dir=out.parent))
    try:
        for name in source_files(root):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, src / name)
        no_isolation = ["--no-build-isolation"] if _build_backend_here() else []
        _pip("wheel", "--no-deps", *no_isolation, "-w", str(out), str(src))
    finally:
        shutil.rmtree(src, ignore_errors=True)
    (wheel,) = out.glob("slaprobe-*.whl")
    return wheel


def _build_backend_here() -> bool:
    """Whether this interpreter has the build backend pyproject.toml requires (setuptools>=77)."""
    from importlib import metadata

    try:
        major = metadata.version("setuptools").split(".")[0]
    except metadata.PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 77


def _pip(*args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args[:1], "--quiet", "--disable-pip-version-check", *args[1:]],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise InstallError(f"building the wheelhouse failed: {r.stderr.strip()[-2000:]}")


def _prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` most recently built wheelhouses; each is ~20 MB."""
    done = sorted(
        (p for p in root.iterdir() if (p / ".complete").exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
