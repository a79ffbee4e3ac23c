"""Decode Stripe's form encoding with bracket notation into nested dicts/lists.

`metadata[orgId]=1&line_items[0][price]=p&expand[]=a&expand[]=b` ->
`{"metadata": {"orgId": "1"}, "line_items": [{"price": "p"}], "expand": ["a", "b"]}`.
Values stay strings (like Stripe, which coerces per parameter).
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_TOKEN = re.compile(r"\[([^\]]*)\]")
_APPEND = object()


def _tokens(key: str) -> list[Any]:
    head, _, rest = key.partition("[")
    tokens: list[Any] = [head]
    if rest:
        for tok in _TOKEN.findall("[" + rest):
            tokens.append(_APPEND if tok == "" else tok)
    return tokens


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(isinstance(k, str) and k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node
    if isinstance(node, list):
        return [_listify(v) for v in node]
    return node


def decode(body: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        tokens = _tokens(key)
        node: Any = root
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            if tok is _APPEND:
                # `a[]` appends; represent as a dict keyed by position so nesting `a[][b]` also works.
                idx = str(len(node))
                if last:
                    node[idx] = value
                else:
                    node = node.setdefault(idx, {})
                continue
            if last:
                node[tok] = value
            else:
                nxt = tokens[i + 1]
                child = node.get(tok)
                if not isinstance(child, dict):
                    child = {}
                    node[tok] = child
                node = child
                _ = nxt
    return _listify(root)
