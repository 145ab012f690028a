"""Loading and validating scene YAML files before any job runs.

A misspelt key or a value of the wrong type must stop the run at parse time
with the file, the key path and what was expected, not half-way through a
cluster job. Defaults come from the schema, so the schema is the one place
where every key is described.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from .errors import InputError


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, hint="check the scene name in config/config.yaml")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"not valid YAML ({getattr(exc, 'problem', exc)})", path=path,
                         line=None if line is None else line + 1) from None


def fill_defaults(instance: Any, schema: dict) -> Any:
    """Return a copy of `instance` with every missing property set to its schema default."""
    if not isinstance(instance, dict) or schema.get("type") not in ("object", None):
        return instance
    out = dict(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = _copy(sub["default"])
        if key in out and isinstance(out[key], dict):
            out[key] = fill_defaults(out[key], sub)
    return out


def _copy(v):
    return yaml.safe_load(yaml.safe_dump(v))


def _key_path(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _explain(err, schema: dict) -> str:
    key = _key_path(err)
    if err.validator == "additionalProperties":
        sub = schema
        for p in err.absolute_path:
            sub = sub.get("properties", {}).get(p, {})
        allowed = sorted(sub.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        parts = []
        for k in extra:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            where = f"{key}.{k}" if key != "(top level)" else str(k)
            parts.append(f"unknown key `{where}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        return "; ".join(parts) + f". Allowed here: {', '.join(allowed)}"
    return f"key `{key}`: {err.message}"


def validate_scene(data: Any, schema_path: str | Path, *, source: str | Path) -> dict:
    """Validate one scene's config against the schema and fill defaults."""
    schema = load_yaml(schema_path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError("a scene file must be a mapping of keys to values", path=source)
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        msgs = [_explain(e, schema) for e in errors]
        raise InputError("invalid scene configuration:\n  - " + "\n  - ".join(msgs), path=source,
                         hint="see config/schema.yaml for every key, its type and default")
    return fill_defaults(data, schema)


def load_scene(path: str | Path, schema_path: str | Path) -> dict:
    return validate_scene(load_yaml(path), schema_path, source=path)


def schema_table(schema: dict) -> str:
    """Markdown table of every leaf key of the scene schema (for config/README.md)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(props: dict, prefix: str = "") -> None:
        for key, sub in props.items():
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub["properties"], f"{prefix}{key}.")
                continue
            kind = sub.get("type") or "one of " + ", ".join(
                yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() for v in sub["enum"])
            if isinstance(kind, list):
                kind = " or ".join(map(str, kind))
            default = yaml.safe_dump(sub["default"], default_flow_style=True).strip().removesuffix("...").strip() \
                if "default" in sub else "(required)"
            rows.append(f"| `{prefix}{key}` | {kind} | `{default}` | {' '.join(sub.get('description', '').split())} |")

    walk(schema["properties"])
    return "\n".join(rows) + "\n"
