"""Validation errors as one line a person can act on.

Pure: imports nothing from ``core``, so every module that validates with
pydantic (events, definitions, settings, mappings, plugins) words errors alike.
"""

from __future__ import annotations

from pydantic import ValidationError


def _reasons(exc: ValidationError, unknown: str) -> list[tuple[str, str]]:
    reasons = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required"
        elif err["type"] == "extra_forbidden":
            msg = unknown
        reasons.append((loc, msg))
    return reasons


def validation_reason(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of the first error, for hand-written definitions.

    Only the first: one mistake usually trips several alternatives, and the
    rest of the list is noise to someone fixing a definition by hand.
    """
    return _reasons(exc, "unknown key")[0]


def describe_validation_error(exc: ValidationError) -> str:
    """Each failing field as ``field 'a.b': reason``, joined by ``; ``.

    pydantic's own text spans several lines and repeats the model name and
    input; a CLI error or an HTTP 400 wants one line naming the field.
    """
    return "; ".join(
        f"field '{loc}': {msg}" if loc else msg for loc, msg in _reasons(exc, "unknown field")
    )


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Why a definition or settings file could not be read as text, naming the
    first byte that is not UTF-8 and its offset in the file."""
    return f"not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
