"""Which languages and versions run where: container images on a cluster, interpreters here.

A ``Runtime`` is everything the pod builder needs to run a program: the image (for a cluster,
and as the key by which the local node recognises a runtime), the file the source is written
to, and the argv the entry point runs. The ``cluster`` backend has a fixed catalogue of
official images; the ``local`` backend is whatever interpreters this machine has installed,
detected once by running them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from execmesh.errors import PermanentError

log = logging.getLogger(__name__)

Backend = Literal["cluster", "local"]
BACKENDS: tuple[Backend, ...] = ("cluster", "local")

# Every program, on either backend, runs with this PATH and nothing from the caller's.
SANDBOX_PATH = "/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin"
_MiB = 1024 * 1024


class UnknownRuntime(PermanentError):
    """A language or version that the chosen backend cannot run."""


@dataclass(frozen=True)
class Runtime:
    language: str
    version: str
    image: str
    source_file: str
    run_command: tuple[str, ...]
    version_command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    # Run first, in the same directory; the run command then starts what it built.
    build_command: tuple[str, ...] = ()
    # Below these a pod cannot even build the program (see ExecutionSpec's check).
    min_memory_bytes: int = 0
    min_tmp_bytes: int = 0
    min_timeout_seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.language}:{self.version}"


@dataclass(frozen=True)
class _Language:
    """How one language is packaged: image naming, file name, commands, version parsing."""

    name: str
    aliases: tuple[str, ...]
    source_file: str
    interpreters: tuple[str, ...]  # commands tried on this machine, in order
    run_args: tuple[str, ...]  # after the interpreter
    compiled: bool  # the interpreter is a compiler: build ./main, then run it
    version_args: tuple[str, ...]
    image_template: str  # formatted with {version}
    version_parts: int  # 2 = major.minor, 1 = major only (Node's images are per major)
    cluster_versions: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    minimums: tuple[int, int, float] = (0, 0, 0.0)  # memory bytes, /tmp bytes, timeout

    def normalise(self, version: str) -> str | None:
        numbers = re.findall(r"\d+", version)
        if len(numbers) < self.version_parts:
            return None
        return ".".join(str(int(n)) for n in numbers[: self.version_parts])

    def runtime(self, version: str, interpreter: str) -> Runtime:
        if self.compiled:
            build = (interpreter, *self.run_args, "-o", "main", self.source_file)
            run: tuple[str, ...] = ("./main",)
        else:
            build, run = (), (interpreter, *self.run_args, self.source_file)
        return Runtime(
            language=self.name,
            version=version,
            image=self.image_template.format(version=version),
            source_file=self.source_file,
            run_command=run,
            version_command=(interpreter, *self.version_args),
            env=self.env,
            build_command=build,
            min_memory_bytes=self.minimums[0],
            min_tmp_bytes=self.minimums[1],
            min_timeout_seconds=self.minimums[2],
        )


# Go compiles into GOCACHE and looks up HOME; both must live on the writable /tmp, and it
# must never try to download a toolchain (the pod has no network). It is built, then run:
# `go run` would turn every non-zero exit status of the program into 1.
_GO_ENV = (
    ("GOCACHE", "/tmp/.cache/go-build"),
    ("GOPATH", "/tmp/go"),
    ("GOTOOLCHAIN", "local"),
    ("GOFLAGS", "-buildvcs=false"),
    ("CGO_ENABLED", "0"),
)

LANGUAGES: tuple[_Language, ...] = (
    _Language(
        name="python",
        aliases=("python3", "py"),
        source_file="main.py",
        interpreters=("python3",),
        run_args=(),
        compiled=False,
        version_args=("--version",),
        image_template="python:{version}-slim",
        version_parts=2,
        cluster_versions=("3.11", "3.12", "3.13"),
        env=(("PYTHONDONTWRITEBYTECODE", "1"),),
    ),
    _Language(
        name="node",
        aliases=("nodejs", "javascript", "js"),
        source_file="main.js",
        interpreters=("node", "nodejs"),
        run_args=(),
        compiled=False,
        version_args=("--version",),
        image_template="node:{version}-alpine",
        version_parts=1,
        cluster_versions=("20", "22"),
    ),
    _Language(
        name="go",
        aliases=("golang",),
        source_file="main.go",
        interpreters=("/usr/local/go/bin/go", "/usr/lib/go/bin/go"),
        run_args=("build",),
        compiled=True,
        version_args=("version",),
        image_template="golang:{version}-alpine",
        version_parts=2,
        cluster_versions=("1.22", "1.23"),
        env=_GO_ENV,
        # The images ship no compiled standard library: the first build compiles it, into
        # /tmp (tens of MB of tmpfs, charged to memory), with one compile of the runtime
        # package alone near 300 MB, and it takes seconds: measured 7 s on an idle core, and
        # about 9 s of CPU (so 18 s at a 500m limit) when both cores are busy.
        minimums=(512 * _MiB, 128 * _MiB, 60.0),
    ),
    _Language(
        name="ruby",
        aliases=("rb",),
        source_file="main.rb",
        interpreters=("ruby",),
        run_args=(),
        compiled=False,
        version_args=("--version",),
        image_template="ruby:{version}-alpine",
        version_parts=2,
        cluster_versions=("3.2", "3.3"),
    ),
    _Language(
        name="bash",
        aliases=("sh", "shell"),
        source_file="main.sh",
        interpreters=("bash",),
        run_args=(),
        compiled=False,
        version_args=("--version",),
        image_template="bash:{version}",
        version_parts=2,
        cluster_versions=("5.2",),
    ),
)

_BY_NAME: dict[str, _Language] = {
    alias: lang for lang in LANGUAGES for alias in (lang.name, *lang.aliases)
}

Probe = Callable[[tuple[str, ...]], str | None]


class RuntimeRegistry:
    """The runtimes of each backend, and lookups that say what exists when they refuse."""

    def __init__(self, runtimes: dict[Backend, tuple[Runtime, ...]]) -> None:
        self._runtimes = runtimes

    def available(self, backend: Backend) -> tuple[Runtime, ...]:
        if backend not in BACKENDS:
            raise UnknownRuntime(f"unknown backend {backend!r}: choose one of {BACKENDS}")
        return self._runtimes.get(backend, ())

    def resolve(self, language: str, version: str | None, backend: Backend) -> Runtime:
        """The runtime for a language and version; no version means the newest one."""
        runtimes = self.available(backend)
        lang = _BY_NAME.get(language.strip().lower())
        candidates = [r for r in runtimes if lang is not None and r.language == lang.name]
        if lang is None or not candidates:
            raise UnknownRuntime(
                f"language {language!r} is not available on the {backend} backend; "
                f"available: {describe(runtimes)}"
            )
        if version is None or version.strip() in ("", "latest"):
            return max(candidates, key=lambda r: _version_key(r.version))
        wanted = lang.normalise(version)
        for runtime in candidates:
            if runtime.version == wanted:
                return runtime
        raise UnknownRuntime(
            f"{lang.name} {version} is not available on the {backend} backend; "
            f"available {lang.name} versions: {', '.join(r.version for r in candidates)}; "
            f"all runtimes: {describe(runtimes)}"
        )

    def runtime_for_image(self, image: str, backend: Backend = "local") -> Runtime:
        for runtime in self.available(backend):
            if runtime.image == image:
                return runtime
        images = ", ".join(r.image for r in self.available(backend)) or "none"
        raise UnknownRuntime(
            f"image {image!r} is not runnable on the {backend} backend; images: {images}"
        )


def describe(runtimes: Iterable[Runtime]) -> str:
    return ", ".join(f"{r.language} {r.version}" for r in runtimes) or "none"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in version.split("."))


def cluster_runtimes() -> tuple[Runtime, ...]:
    """The catalogue for a cluster: official images, interpreters found on the image's PATH."""
    return tuple(
        lang.runtime(version, os.path.basename(lang.interpreters[0]))
        for lang in LANGUAGES
        for version in lang.cluster_versions
    )


def detect_local_runtimes(probe: Probe, which: Callable[[str], str | None]) -> tuple[Runtime, ...]:
    """One runtime per distinct interpreter version installed, keyed by its image name.

    The image is the official image naming of that version, so that the local node can map a
    pod's image back to the interpreter that stands in for it.
    """
    found: dict[str, Runtime] = {}
    for lang in LANGUAGES:
        for candidate in lang.interpreters:
            path = which(candidate)
            if path is None:
                continue
            version = lang.normalise(probe((path, *lang.version_args)) or "")
            if version is not None:
                found.setdefault(f"{lang.name}:{version}", lang.runtime(version, path))
    return tuple(found.values())


def probe_version(argv: tuple[str, ...]) -> str | None:
    """What an interpreter prints when asked its version, or None if it cannot say."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            timeout=30,
            env={"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot run %s to learn its version: %s", argv[0], exc)
        return None
    if result.returncode != 0:
        log.warning("%s exited %d when asked its version", argv[0], result.returncode)
        return None
    return (result.stdout + result.stderr).decode("utf-8", "replace")


def which_in_sandbox_path(command: str) -> str | None:
    path = shutil.which(command, path=SANDBOX_PATH)
    return None if path is None else os.path.realpath(path)


@functools.cache
def default_registry() -> RuntimeRegistry:
    """The registry of this process: the cluster catalogue and this machine, probed once."""
    local = detect_local_runtimes(probe_version, which_in_sandbox_path)
    log.info("local runtimes: %s", describe(local))
    return RuntimeRegistry({"cluster": cluster_runtimes(), "local": local})


def resolve(language: str, version: str | None, backend: Backend) -> Runtime:
    return default_registry().resolve(language, version, backend)


def available(backend: Backend) -> tuple[Runtime, ...]:
    return default_registry().available(backend)


def runtime_for_image(image: str, backend: Backend = "local") -> Runtime:
    return default_registry().runtime_for_image(image, backend)
