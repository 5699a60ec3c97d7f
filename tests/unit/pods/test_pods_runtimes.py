"""The runtime registry: what runs on a cluster, what runs here, and refusals that say why."""

from __future__ import annotations

import subprocess

import pytest

from execmesh.errors import PermanentError
from execmesh.pods.runtimes import (
    SANDBOX_PATH,
    RuntimeRegistry,
    UnknownRuntime,
    cluster_runtimes,
    default_registry,
    detect_local_runtimes,
)

VERSION_OUTPUT = {
    "/usr/bin/python3": "Python 3.11.2\n",
    "/usr/bin/node": "v20.20.2\n",
    "/usr/local/go/bin/go": "go version go1.26.8 linux/amd64\n",
    "/usr/lib/go/bin/go": "go version go1.19.8 linux/amd64\n",
    "/usr/bin/ruby": "ruby 3.1.2p20 (2022-04-12 revision 4491bb740a) [x86_64-linux-gnu]\n",
    "/usr/bin/bash": "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n",
}
INSTALLED = {
    "python3": "/usr/bin/python3",
    "node": "/usr/bin/node",
    "nodejs": "/usr/bin/node",
    "/usr/local/go/bin/go": "/usr/local/go/bin/go",
    "/usr/lib/go/bin/go": "/usr/lib/go/bin/go",
    "ruby": "/usr/bin/ruby",
    "bash": "/usr/bin/bash",
}


def fake_probe(argv: tuple[str, ...]) -> str | None:
    return VERSION_OUTPUT.get(argv[0])


def registry(installed: dict[str, str] | None = None) -> RuntimeRegistry:
    found = installed if installed is not None else INSTALLED
    local = detect_local_runtimes(fake_probe, found.get)
    return RuntimeRegistry({"cluster": cluster_runtimes(), "local": local})


def test_the_cluster_catalogue_uses_official_images() -> None:
    images = {r.image for r in registry().available("cluster")}
    expected = {"python:3.12-slim", "node:22-alpine", "golang:1.23-alpine", "ruby:3.3-alpine"}
    assert expected | {"bash:5.2"} <= images


def test_cluster_runtimes_run_the_interpreter_from_the_images_path() -> None:
    runtime = registry().resolve("go", "1.23", "cluster")
    assert runtime.build_command == ("go", "build", "-o", "main", "main.go")
    assert runtime.run_command == ("./main",)
    assert runtime.source_file == "main.go"
    assert dict(runtime.env)["GOCACHE"].startswith("/tmp/")
    assert registry().resolve("python", "3.12", "cluster").run_command == ("python3", "main.py")
    assert registry().resolve("node", "22", "cluster").run_command == ("node", "main.js")
    assert registry().resolve("ruby", "3.3", "cluster").run_command == ("ruby", "main.rb")
    assert registry().resolve("bash", "5.2", "cluster").run_command == ("bash", "main.sh")


def test_local_runtimes_are_the_installed_interpreters_at_their_versions() -> None:
    local = {(r.language, r.version): r for r in registry().available("local")}
    assert set(local) == {
        ("python", "3.11"),
        ("node", "20"),
        ("go", "1.26"),
        ("go", "1.19"),
        ("ruby", "3.1"),
        ("bash", "5.2"),
    }
    assert local["go", "1.19"].build_command[0] == "/usr/lib/go/bin/go"
    assert local["python", "3.11"].run_command == ("/usr/bin/python3", "main.py")


def test_local_images_follow_the_official_naming_of_their_version() -> None:
    images = {r.key: r.image for r in registry().available("local")}
    assert images == {
        "python:3.11": "python:3.11-slim",
        "node:20": "node:20-alpine",
        "go:1.26": "golang:1.26-alpine",
        "go:1.19": "golang:1.19-alpine",
        "ruby:3.1": "ruby:3.1-alpine",
        "bash:5.2": "bash:5.2",
    }


@pytest.mark.parametrize("backend", ["cluster", "local"])
def test_images_are_distinct_per_runtime_so_an_image_names_its_runtime(backend: str) -> None:
    reg = registry()
    runtimes = reg.available(backend)  # type: ignore[arg-type]
    assert len({r.image for r in runtimes}) == len(runtimes)
    for runtime in runtimes:
        assert reg.runtime_for_image(runtime.image, backend) == runtime  # type: ignore[arg-type]


def test_an_image_not_runnable_here_is_refused_with_the_images_that_are() -> None:
    with pytest.raises(UnknownRuntime, match=r"python:3\.11-slim") as refusal:
        registry().runtime_for_image("python:3.12-slim")
    assert "python:3.12-slim" in str(refusal.value)


@pytest.mark.parametrize(
    ("language", "version", "key"),
    [
        ("python", "3.11", "python:3.11"),
        ("Python3", "3.11.7", "python:3.11"),
        ("py", None, "python:3.11"),
        ("javascript", "20.1.0", "node:20"),
        ("nodejs", "v20", "node:20"),
        ("golang", "1.26.8", "go:1.26"),
        ("go", None, "go:1.26"),
        ("go", "latest", "go:1.26"),
        ("ruby", "3.1", "ruby:3.1"),
        ("bash", "5.2.15", "bash:5.2"),
    ],
)
def test_languages_and_versions_resolve_by_alias_and_major_minor(
    language: str, version: str | None, key: str
) -> None:
    assert registry().resolve(language, version, "local").key == key


def test_no_version_means_the_newest_available() -> None:
    assert registry().resolve("python", None, "cluster").version == "3.13"


def test_an_unknown_language_is_refused_naming_what_is_available() -> None:
    with pytest.raises(UnknownRuntime) as refusal:
        registry().resolve("cobol", "85", "local")
    message = str(refusal.value)
    assert "'cobol'" in message and "local" in message
    for available in ("python 3.11", "node 20", "go 1.26", "ruby 3.1", "bash 5.2"):
        assert available in message


def test_an_unavailable_version_is_refused_naming_the_versions_that_exist() -> None:
    with pytest.raises(UnknownRuntime, match=r"python 3\.9 .*cluster.*3\.11, 3\.12, 3\.13"):
        registry().resolve("python", "3.9", "cluster")


def test_a_language_missing_on_this_machine_is_refused_there_only() -> None:
    reg = registry({"python3": "/usr/bin/python3", "bash": "/usr/bin/bash"})
    with pytest.raises(UnknownRuntime, match=r"available: python 3\.11, bash 5\.2"):
        reg.resolve("ruby", "3.1", "local")
    assert reg.resolve("ruby", "3.3", "cluster").image == "ruby:3.3-alpine"


def test_an_interpreter_that_cannot_say_its_version_is_left_out() -> None:
    local = detect_local_runtimes(lambda argv: None, INSTALLED.get)
    assert local == ()
    with pytest.raises(UnknownRuntime, match="available: none"):
        RuntimeRegistry({"local": local}).resolve("python", "3.11", "local")


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(UnknownRuntime, match="backend"):
        registry().resolve("python", "3.11", "moon")  # type: ignore[arg-type]


def test_refusals_are_permanent_errors() -> None:
    assert issubclass(UnknownRuntime, PermanentError)


def test_this_machine_has_python_and_bash_with_the_versions_they_print() -> None:
    local = default_registry().available("local")
    assert {"python", "bash"} <= {r.language for r in local}
    for runtime in local:
        printed = subprocess.run(
            runtime.version_command,
            capture_output=True,
            env={"PATH": SANDBOX_PATH, "HOME": "/tmp"},
            timeout=30,
            check=True,
        )
        assert runtime.version.split(".")[0] in (printed.stdout + printed.stderr).decode()
        assert (runtime.build_command or runtime.run_command)[0].startswith("/")
