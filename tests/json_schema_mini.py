"""A small JSON Schema validator for the keywords samba_ext/data/results.schema.json uses
(type, const, enum, required, properties, additionalProperties, items, anyOf, allOf,
if/then, minimum, maximum), for machines without the ``jsonschema`` package. Returns the
list of errors (empty when valid)."""
from __future__ import annotations

from typing import Any

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _TYPES[t])


def validate(v: Any, s: dict, path: str = "$") -> list[str]:
    errs: list[str] = []
    if "type" in s:
        ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(v, t) for t in ts):
            return [f"{path}: expected {ts}, got {type(v).__name__}"]
    if "const" in s and v != s["const"]:
        errs.append(f"{path}: expected {s['const']!r}, got {v!r}")
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{path}: {v!r} not in {s['enum']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append(f"{path}: {v} < {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errs.append(f"{path}: {v} > {s['maximum']}")
    if isinstance(v, dict):
        errs += [f"{path}: missing {k!r}" for k in s.get("required", []) if k not in v]
        props = s.get("properties", {})
        for k, sub in props.items():
            if k in v:
                errs += validate(v[k], sub, f"{path}.{k}")
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            for k in v:
                if k not in props:
                    errs += validate(v[k], extra, f"{path}.{k}")
    if isinstance(v, list) and "items" in s:
        for i, x in enumerate(v):
            errs += validate(x, s["items"], f"{path}[{i}]")
    if "anyOf" in s and all(validate(v, sub, path) for sub in s["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    for sub in s.get("allOf", []):
        errs += validate(v, sub, path)
    if "if" in s and not validate(v, s["if"], path) and "then" in s:
        errs += validate(v, s["then"], path)
    return errs
