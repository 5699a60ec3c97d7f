"""``execmesh run|status|cancel|list``: the API from a terminal.

Configured by ``EXECMESH_API_URL`` (default http://127.0.0.1:8000) and ``EXECMESH_API_KEY``.
``run`` submits a file, shows its progress on a terminal, prints what the program wrote and
exits with the program's exit code (or 1 with a message when it did not run to its end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from execmesh.client.http import DEFAULT_URL, TERMINAL, ApiClient, ApiError

EXTENSIONS = {
    ".py": "python",
    ".js": "node",
    ".mjs": "node",
    ".go": "go",
    ".rb": "ruby",
    ".sh": "bash",
}
POLL_SECONDS = 0.2
# Exit codes of the CLI itself, apart from the program's: the API refused, or it did not end.
EXIT_REFUSED = 2
EXIT_NOT_RUN = 1


def client_from_env(environ: Mapping[str, str] | None = None) -> ApiClient:
    env = os.environ if environ is None else environ
    return ApiClient(env.get("EXECMESH_API_URL", DEFAULT_URL), env.get("EXECMESH_API_KEY", ""))


def language_of(path: Path, given: str | None) -> str:
    if given:
        return given
    language = EXTENSIONS.get(path.suffix.lower())
    if language is None:
        raise SystemExit(f"execmesh run: cannot tell the language of {path}: use --lang")
    return language


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    body: dict[str, Any] = {
        "language": language_of(path, args.lang),
        "version": args.version,
        "script": path.read_text(),
        "args": list(args.args),
    }
    if args.stdin:
        body["stdin"] = sys.stdin.read() if args.stdin == "-" else Path(args.stdin).read_text()
    limits = {"timeout_seconds": args.timeout, "memory_mb": args.memory}
    limits = {name: value for name, value in limits.items() if value is not None}
    if limits:
        body["limits"] = limits
    return body


def wait_for_end(
    client: ApiClient, execution_id: str, progress: TextIO | None, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        execution = client.execution(execution_id)
        status = str(execution["status"])
        if progress is not None and status != shown:
            progress.write(f"\r\033[K{execution_id}: {status}")
            progress.flush()
            shown = status
        if status in TERMINAL:
            if progress is not None:
                progress.write("\r\033[K")
                progress.flush()
            return execution
        if time.monotonic() > deadline:
            raise SystemExit(f"execmesh run: {execution_id} still {status} after {timeout:g}s")
        time.sleep(POLL_SECONDS)


def show_result(client: ApiClient, execution: dict[str, Any]) -> int:
    result = execution.get("result") or {}
    for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        output = result.get(stream)
        if not output:
            continue
        if output.get("data") is None:
            data = client.output(execution["id"], stream)
        elif output.get("encoding") == "base64":
            import base64

            data = base64.b64decode(output["data"])
        else:
            data = output["data"].encode()
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
        if output.get("truncated"):
            print(f"execmesh: {stream} was truncated", file=sys.stderr)
    status = execution["status"]
    if status == "completed":
        return int(result.get("exit_code") or 0)
    reason = result.get("message") or result.get("code") or ""
    print(f"execmesh: execution {execution['id']} {status}: {reason}".rstrip(": "), file=sys.stderr)
    return EXIT_NOT_RUN


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh run", description="run a file through the API")
    parser.add_argument("file")
    parser.add_argument("args", nargs="*", help="arguments given to the program")
    parser.add_argument("--lang", help="language (default: from the file extension)")
    parser.add_argument("--version", default="latest", help="language version (default: latest)")
    parser.add_argument("--stdin", help="a file whose content is the program's stdin ('-': ours)")
    parser.add_argument("--timeout", type=float, help="the run's timeout in seconds")
    parser.add_argument("--memory", type=int, help="the run's memory limit in MB")
    parser.add_argument("--wait", type=float, default=600.0, help="give up waiting after this")
    args = parser.parse_args(argv)
    progress = sys.stderr if sys.stderr.isatty() else None
    with client_from_env() as client:
        try:
            execution_id = client.submit(request_body(args))
            execution = wait_for_end(client, execution_id, progress, args.wait)
            return show_result(client, execution)
        except ApiError as error:
            print(f"execmesh run: {error}", file=sys.stderr)
            return EXIT_REFUSED


def status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh status")
    parser.add_argument("execution_id")
    args = parser.parse_args(argv)
    return _print_call(lambda client: client.execution(args.execution_id))


def cancel(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh cancel")
    parser.add_argument("execution_id")
    args = parser.parse_args(argv)
    return _print_call(lambda client: client.cancel(args.execution_id))


def list_(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh list")
    parser.add_argument("--status")
    parser.add_argument("--language")
    parser.add_argument("--limit", default="20")
    parser.add_argument("--cursor")
    args = parser.parse_args(argv)
    query = {name: value for name, value in vars(args).items() if value is not None}
    with client_from_env() as client:
        try:
            page = client.list(**query)
        except ApiError as error:
            print(f"execmesh list: {error}", file=sys.stderr)
            return EXIT_REFUSED
    for item in page["items"]:
        exit_code = (item.get("result") or {}).get("exit_code")
        print(
            f"{item['id']}  {item['status']:<10} {item.get('language') or '':<7} "
            f"{item.get('submitted_at') or '':<32} {'' if exit_code is None else exit_code}"
        )
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}")
    return 0


def _print_call(call: Any) -> int:
    with client_from_env() as client:
        try:
            print(json.dumps(call(client), indent=2))
        except ApiError as error:
            print(f"execmesh: {error}", file=sys.stderr)
            return EXIT_REFUSED
    return 0
