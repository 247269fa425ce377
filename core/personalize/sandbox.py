"""The Jinja2 sandbox templates render in, and how its errors are worded.

Templates are written by marketers and may come from an installation's own
folders, so they run in an immutable sandbox: no attribute starting with an
underscore (``__class__``, ``__mro__``), no ``mro`` on types, ``str.format``
checked the same way, no mutation of lists and dicts from the context,
``range`` capped, ``*`` / ``**`` refused when the result would be huge
(``"x" * 10**9`` would otherwise exhaust memory before any check ran), and
the output of a template capped. Time is not bounded: nested loops over
capped ranges can still run long.
Undefined names fail (StrictUndefined) instead of rendering as nothing.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing  # Undefined's "no object" marker

from core.personalize.errors import TemplateError

# Longest string or sequence ``*`` may build, and largest integer ``**`` may.
MAX_REPEAT = 100_000
MAX_POWER_BITS = 4096
# Longest output of one template: far above any email (Gmail clips at 102 KB),
# far below what a runaway loop would fill memory with.
MAX_OUTPUT = 4_000_000


class SegflowUndefined(StrictUndefined):
    """StrictUndefined whose message names the missing variable or key and,
    for a mapping, the keys it does have (the usual cause is a typo)."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = self._undefined_name
        obj = self._undefined_obj
        if obj is missing:
            return f"undefined variable {name!r}"
        if isinstance(obj, Mapping):
            keys = ", ".join(sorted(str(k) for k in obj)[:12]) or "none"
            return f"undefined key {name!r} (the mapping has: {keys})"
        return f"undefined attribute {name!r} of {type(obj).__name__}"


# What ``getattr`` finds on a dict: every other name is one of its keys.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class EmailSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the arithmetic that allocates checked."""

    intercepted_binops = frozenset({"*", "**"})
    # Immutable value types of the context whose public attributes are all
    # safe to read (the cart, its lines, the message): read directly.
    plain_types: frozenset[type] = frozenset()

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``product.name`` on a plain dict: the key, as the sandbox would find it
        # after getattr failed, without raising and catching AttributeError for
        # each of the many such lookups in an email. dict's own attributes (and
        # every dunder) still go through the sandbox's checks.
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        if type(obj) in self.plain_types and not attribute.startswith("_"):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and left.bit_length() * right > MAX_POWER_BITS
            ):
                raise SecurityError(f"{left} ** {right} is too large for a template")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(times, int)
                and len(seq) * times > MAX_REPEAT
            ):
                raise SecurityError(
                    f"repeating a {type(seq).__name__} {times} times is too large for a "
                    f"template (at most {MAX_REPEAT:,} items or characters)"
                )
        return left * right


def environment(
    *,
    html: bool,
    loader: Any,
    filters: Mapping[str, Callable],
    plain_types: frozenset[type] = frozenset(),
) -> EmailSandbox:
    """One of the two environments: HTML (every template autoescaped, whatever
    its name, ``.html.j2`` included) or text (never escaped)."""
    env = EmailSandbox(
        loader=loader,
        autoescape=html,
        undefined=SegflowUndefined,
        # Files are read once per process; a changed template needs a new process
        # (every `segflow render` is one), which keeps a render free of stat calls.
        auto_reload=False,
        cache_size=-1,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # None prints as nothing: an absent attribute is None, not the word "None".
        finalize=_finalize,
    )
    env.filters.update(filters)
    env.plain_types = plain_types
    env.concat = _capped_concat  # type: ignore[method-assign]
    return env


def _capped_concat(parts: Any) -> str:
    """``"".join`` of a template's output, refusing to grow past MAX_OUTPUT."""
    out = []
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_OUTPUT:
            raise SecurityError(
                f"the output passed {MAX_OUTPUT:,} characters; a loop that runs away?"
            )
        out.append(part)
    return "".join(out)


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def located(exc: BaseException, show: Callable[[str], str | None], fallback: str) -> TemplateError:
    """A TemplateError for ``exc`` raised while loading or rendering, starting
    with ``file:line`` of the innermost template frame.

    ``show(filename)`` says how a template file is shown, or None for a
    filename that is no template (Jinja's own frames); ``fallback`` is the
    place shown when no frame is a template's.
    """
    if isinstance(exc, TemplateError):
        return exc
    where = fallback
    if isinstance(exc, TemplateSyntaxError):
        file = show(exc.filename or "") or exc.name or fallback
        return TemplateError(f"{file}:{exc.lineno}: syntax error: {exc.message}")
    if isinstance(exc, TemplateNotFound):
        return TemplateError(f"{fallback}: no template {exc.name!r} in the template folders")
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        file = show(frame.filename)
        if file is not None:
            where = f"{file}:{frame.lineno}"
            break
    if isinstance(exc, UndefinedError):
        return TemplateError(f"{where}: {exc.message}")
    if isinstance(exc, SecurityError):
        return TemplateError(f"{where}: refused by the template sandbox: {exc}")
    if isinstance(exc, OverflowError):
        # The sandbox's range cap raises this.
        return TemplateError(f"{where}: refused by the template sandbox: {exc}")
    return TemplateError(f"{where}: {type(exc).__name__}: {exc}")
