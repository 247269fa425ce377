"""Validation errors as one line a person can act on.

Pure: imports nothing from ``core``, so every module that validates with
pydantic (events, definitions, settings, mappings) words errors alike.
"""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError) -> str:
    """Each failing field as ``field 'a.b': reason``, joined by ``; ``.

    pydantic's own text spans several lines and repeats the model name and
    input; a CLI error or an HTTP 400 wants one line naming the field.
    """
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"field '{loc}': {msg}" if loc else msg)
    return "; ".join(parts)
