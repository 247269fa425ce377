"""How to read a file for import: a YAML mapping file plus overrides, as ReadOptions.

Shared by ``segflow import``, flows and notebooks, so a mapping means the same
everywhere; every error names the file (or option) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import describe_validation_error, not_utf8
from core.ingestion.files import ImportUsageError
from core.ingestion.schema import parse_timezone
from core.types import ReadOptions


def read_mapping(path: Path) -> dict[str, Any]:
    """A mapping file's content (a YAML object)."""
    if not path.is_file():
        raise ImportUsageError(f"{path}: no such mapping file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ImportUsageError(f"{path}: {not_utf8(exc)}") from None
    except yaml.YAMLError as exc:
        raise ImportUsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ImportUsageError(f"{path}: a mapping file is a YAML object")
    return data


def load_read_options(
    mapping: Path | None = None,
    *,
    columns: dict[str, str] | None = None,
    constants: dict[str, str] | None = None,
    computed: dict[str, str] | None = None,
    **fields: Any,
) -> ReadOptions:
    """The mapping file's options, with ``columns``/``constants``/``computed`` added
    and the other ``fields`` (ts_format, timezone, delimiter...) replaced when not None."""
    data: dict[str, Any] = read_mapping(mapping) if mapping else {}
    data.setdefault("columns", {}).update(columns or {})
    data.setdefault("constants", {}).update(constants or {})
    data.setdefault("computed", {}).update(computed or {})
    data.update({k: v for k, v in fields.items() if v is not None})
    if mapping:
        data["mapping_file"] = str(mapping)
    try:
        options = ReadOptions(**data)
    except ValidationError as exc:
        where = f"{mapping}: " if mapping else ""
        raise ImportUsageError(f"{where}{describe_validation_error(exc)}") from None
    if options.timezone:
        try:
            parse_timezone(options.timezone)
        except ValueError as exc:
            raise ImportUsageError(f"--timezone: {exc}") from None
    return options
