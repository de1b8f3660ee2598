"""Asking a node: JSON-RPC, REST and argv calls, and reading their answers.

Parameters are placed into a JSON-RPC request's params or a program's argv
as whole values; nothing here goes through a shell.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from nodevisor import ProtocolInterface
from nodevisor._interface import Call

from ._spec import BabelSpec

__all__ = ["CallFailed", "ask", "call", "extract", "read_method"]

log = logging.getLogger(__name__)
_MAX_OUTPUT = 64_000


class CallFailed(Exception):
    """The node did not answer a call, or answered with an error."""


async def call(spec: BabelSpec, what: Call, params: Sequence[Any] = ()) -> Any:
    """Make the call and return the answer, before extraction."""
    with anyio.fail_after(what.timeout):
        if what.jsonrpc:
            return await anyio.to_thread.run_sync(
                _jsonrpc, spec.interface, what, list(params or what.params)
            )
        if what.rest:
            return await anyio.to_thread.run_sync(_rest, spec.interface, what)
        return await _exec(spec, list(params or what.exec or ()))


def _request(interface: ProtocolInterface, url: str, body: bytes | None) -> Any:
    request = urllib.request.Request(url, data=body)
    request.add_header("Content-Type", "application/json")
    if interface.rpc.user:
        pair = f"{interface.rpc.user}:{interface.rpc.password}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(pair).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read(_MAX_OUTPUT * 16))
    except urllib.error.HTTPError as exc:
        # JSON-RPC servers answer errors with a status and a JSON body
        try:
            return json.loads(exc.read(_MAX_OUTPUT))
        except ValueError:
            raise CallFailed(f"{url} answered HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise CallFailed(f"{url} did not answer: {exc}") from exc


def _jsonrpc(interface: ProtocolInterface, what: Call, params: list[Any]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": what.jsonrpc, "params": params}
    answer = _request(interface, interface.rpc.url, json.dumps(body).encode())
    if not isinstance(answer, dict):
        raise CallFailed(f"{what.jsonrpc} answered {answer!r}, not a JSON-RPC reply")
    if answer.get("error"):
        raise CallFailed(f"{what.jsonrpc} failed: {answer['error']}")
    return answer.get("result")


def _rest(interface: ProtocolInterface, what: Call) -> Any:
    url = interface.rpc.url.rstrip("/") + "/" + (what.rest or "").lstrip("/")
    return _request(interface, url, None)


async def _exec(spec: BabelSpec, argv: list[str]) -> Any:
    argv = [str(element) for element in argv]
    environment = {**os.environ, **spec.environment}
    environment["PATH"] = os.pathsep.join([*spec.path, environment.get("PATH", "")])
    try:
        done = await anyio.run_process(
            argv, cwd=spec.workdir, env=environment, check=False
        )
    except OSError as exc:
        raise CallFailed(f"{argv[0]!r} could not run: {exc}") from exc
    output = done.stdout.decode(errors="replace")[:_MAX_OUTPUT]
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace")[:2000].strip()
        raise CallFailed(f"{argv} exited with code {done.returncode}: {error}")
    try:
        return json.loads(output)
    except ValueError:
        return output.strip()


def extract(what: Call, answer: Any) -> Any:
    """The value at ``what.pointer`` in the answer, mapped by ``what.map``."""
    value = answer
    for part in what.pointer.split("/")[1:] if what.pointer else ():
        part = part.replace("~1", "/").replace("~0", "~")
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise CallFailed(f"the answer has nothing at {what.pointer!r}") from exc
    if what.map:
        key = json.dumps(value) if not isinstance(value, str) else value
        if key not in what.map:
            raise CallFailed(f"the answer {key!r} is not in the method's map")
        return what.map[key]
    return value


def as_int(value: Any) -> int:
    """An integer from a JSON number, decimal text or ``0x`` hex, or a list's size."""
    if isinstance(value, bool):
        raise CallFailed(f"{value!r} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        return len(value)
    if isinstance(value, str):
        try:
            return int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError:
            pass
    raise CallFailed(f"{value!r} is not a number")


async def read_method(spec: BabelSpec, name: str) -> Any:
    """Ask method ``name`` and return its value, typed for its field."""
    what = spec.interface.methods[name]
    value = extract(what, await call(spec, what))
    if name in ("height", "peers"):
        return as_int(value)
    return str(value)


async def ask(spec: BabelSpec) -> tuple[dict[str, Any], list[str]]:
    """Every declared method's value, and a line for each that failed."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name in spec.interface.methods:
        try:
            values[name] = await read_method(spec, name)
        except (CallFailed, TimeoutError) as exc:
            errors.append(f"{name}: {exc or 'timed out'}")
    return values, errors


def render(answer: Any) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return text[:_MAX_OUTPUT]


def substituted(spec: BabelSpec, name: str, values: Mapping[str, Any]) -> Sequence[Any]:
    return spec.interface.commands[name].substitute(values)
