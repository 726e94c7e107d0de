"""The small part of the node's JavaScript console that ``kcn attach --exec`` needs.

Supported: property paths (``kaia.syncing``, ``admin.nodeInfo.id``), object literals of them
(``{s: kaia.syncing, n: kaia.blockNumber}``), ``JSON.stringify(...)`` around either, and a call with one
string argument (``admin.addPeer("kni://...")``).
``render`` prints a value the way the console does: strings quoted, objects in JS notation.
"""

from __future__ import annotations

import json
import re

_IDENT = re.compile(r"\s*([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\s*")


class ConsoleError(Exception):
    pass


def evaluate(expr: str, scope: dict):
    value, rest = _expr(expr.strip(), scope)
    if rest.strip().rstrip(";"):
        raise ConsoleError(f"SyntaxError: Unexpected token {rest.strip()[:20]!r}")
    return value


def _expr(text: str, scope: dict):
    text = text.lstrip()
    if text.startswith("JSON.stringify("):
        value, rest = _expr(text[len("JSON.stringify(") :], scope)
        rest = rest.lstrip()
        if not rest.startswith(")"):
            raise ConsoleError("SyntaxError: missing ) after argument list")
        return json.dumps(value, separators=(",", ":")), rest[1:]
    if text.startswith("{"):
        obj, rest = {}, text[1:]
        while True:
            rest = rest.lstrip()
            if rest.startswith("}"):
                return obj, rest[1:]
            m = re.match(r"[\"']?([A-Za-z_$][\w$]*)[\"']?\s*:", rest)
            if not m:
                raise ConsoleError(f"SyntaxError: Unexpected token {rest[:20]!r}")
            obj[m.group(1)], rest = _expr(rest[m.end() :], scope)
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:]
    m = _IDENT.match(text)
    if not m:
        raise ConsoleError(f"SyntaxError: Unexpected token {text[:20]!r}")
    value = scope
    for part in m.group(1).split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConsoleError(f"ReferenceError: {m.group(1)} is not defined")
        value = value[part]
    rest = text[m.end() :]
    if callable(value):
        call = re.match(r"\(\s*(\"[^\"]*\"|'[^']*')\s*\)", rest)
        if not call:
            raise ConsoleError(f"SyntaxError: {m.group(1)} takes one string argument")
        return value(call.group(1)[1:-1]), rest[call.end() :]
    return value, rest


def render(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)
