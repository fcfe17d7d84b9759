"""The JSON Schemas of docs/schema/ as validators, for every report the suite produces."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schema"
FILES = {
    "udpxfer.report/1": "report.schema.json",
    "udpxfer.send-report/1": "send-report.schema.json",
    "udpxfer.stream/1": "stream.schema.json",
    "udpxfer.compare/1": "compare.schema.json",
}


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return schema


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    resources = [(load(f)["$id"], Resource.from_contents(load(f))) for f in FILES.values()]
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = load(FILES[schema_name])
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` matches the schema it names."""
    _validator(doc["schema"]).validate(doc)


def is_udpxfer_document(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("schema") in FILES
