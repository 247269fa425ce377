"""Validation errors as people read them: pydantic's error list cut to one line.

Pure: imports nothing from ``core``, so any layer (definitions, settings, the
CLI, plugins) can word its errors the same way.
"""

from __future__ import annotations

from pydantic import ValidationError


def validation_reason(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of the first error.

    Only the first: one mistake usually trips several alternatives, and the
    rest of the list is noise to someone fixing a definition by hand.
    """
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required"
    return loc, msg


def describe_validation_error(exc: ValidationError) -> str:
    """``location: message`` of the first error (just the message at the top level)."""
    loc, msg = validation_reason(exc)
    return f"{loc}: {msg}" if loc else msg
