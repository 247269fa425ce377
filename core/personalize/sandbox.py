"""The Jinja2 sandbox templates render in, and how its errors are worded.

Templates are written by marketers and may come from an installation's own
folders, so they run in an immutable sandbox: no attribute starting with an
underscore (``__class__``, ``__mro__``), no ``mro`` on types, ``str.format``
checked the same way, no mutation of lists and dicts from the context,
``range`` capped, ``*`` / ``**`` refused when the result would be huge
(``"x" * 10**9`` would otherwise exhaust memory before any check ran), and
the output of a template capped. Time is bounded by a budget of loop steps
per render (``{% for %}`` inside ``{% for %}`` over capped ranges would
otherwise run for hours), and the calls that build one large string from
small inputs (``center``, ``join``, ``replace``, format widths) are checked
before they allocate.
Undefined names fail (StrictUndefined) instead of rendering as nothing.
"""

from __future__ import annotations

import itertools
import operator
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
)
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import (
    missing,  # Undefined's "no object" marker
    pass_context,
)

from core.personalize.errors import TemplateError

# Longest string or sequence ``*`` may build, and largest integer ``**`` may.
MAX_REPEAT = 100_000
MAX_POWER_BITS = 4096
# Longest output of one template: far above any email (Gmail clips at 102 KB),
# far below what a runaway loop would fill memory with.
MAX_OUTPUT = 4_000_000
# Loop steps one render (its includes too) may take: far above any email's,
# far below a loop nest that would run for minutes.
MAX_LOOP_STEPS = 1_000_000
# Where the step count of a render lives in its context (shared with includes).
_STEPS = "__segflow_loop_steps"
_STEPS_FILTER = "__segflow_counted"
# A width or precision in a format string: %10d, %.*f, {:>10}, {0:10.3}.
_FORMAT_WIDTH = re.compile(r"\d{7,}")


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


def _over_budget() -> Iterator[int]:
    raise SecurityError(
        f"loops took more than {MAX_LOOP_STEPS:,} steps; nested loops that run away?"
    )
    yield 0  # a generator, so it raises only when the budget is spent


class _Steps:
    """The loop steps one render has left: a tick per step, then an error."""

    __slots__ = ("ticks",)

    def __init__(self) -> None:
        self.ticks = itertools.chain(range(MAX_LOOP_STEPS), _over_budget())


class _BudgetedTemplate(Template):
    """A template whose render starts a fresh loop-step budget, which the
    templates it includes share (they get the parent's variables)."""

    def new_context(
        self,
        vars: dict[str, Any] | None = None,
        shared: bool = False,
        locals: Mapping[str, Any] | None = None,
    ) -> Context:
        vars = dict(vars or {})
        if not isinstance(vars.get(_STEPS), _Steps):
            vars[_STEPS] = _Steps()
        return super().new_context(vars, shared, locals)


_first = operator.itemgetter(0)


@pass_context
def _counted(context: Context, iterable: Any) -> Any:
    """``iterable`` taking a step of the render's budget per item."""
    steps = context.get(_STEPS)
    if not isinstance(steps, _Steps):
        steps = _Steps()
    # zip takes an item, then a tick (none once the items end), all in C, so a
    # loop pays no Python call per item.
    return map(_first, zip(iterable, steps.ticks, strict=False))


def _weight(value: Any, limit: int) -> int:
    """Roughly how many characters or items ``value`` holds, nested sequences
    counted in full; counting stops once past ``limit``."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple | dict):
        total = len(value)
        for item in value.values() if isinstance(value, dict) else value:
            if total > limit:
                break
            if isinstance(item, str | list | tuple | dict):
                total += _weight(item, limit - total)
        return total
    return 1


def _check_size(what: str, size: int) -> None:
    if size > MAX_OUTPUT:
        raise SecurityError(
            f"{what} would build about {size:,} characters, more than a template may "
            f"({MAX_OUTPUT:,})"
        )


def _check_format(spec: Any) -> None:
    if isinstance(spec, str):
        for width in _FORMAT_WIDTH.findall(spec):
            _check_size(f"the format width {width}", int(width))


def _check_call(name: str, owner: Any, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuse a string method or filter call whose result would be huge,
    before it is built."""
    if name in _WIDTH_CALLS:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool):
                _check_size(f"{name}({value})", abs(value))
    if name == "join" and isinstance(owner, str) and args:
        items = args[0]
        if isinstance(items, list | tuple):
            _check_size("join", len(owner) * len(items) + _weight(items, MAX_OUTPUT))
    elif name == "replace" and isinstance(owner, str) and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = owner.count(old) if old else len(owner) + 1
            _check_size("replace", len(owner) + hits * (len(new) - len(old)))
    elif name in {"format", "format_map"} and isinstance(owner, str):
        _check_format(owner)


def _checked_filter(name: str, func: Callable) -> Callable:
    """Jinja's filter ``name`` with its arguments checked first (``_check_call``):
    ``join`` and ``replace`` see their input as the string methods would."""
    import functools

    from jinja2.utils import _PassArg

    passes = _PassArg.from_obj(func)

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        given = args[1:] if passes is not None else args
        value, rest = (given[0], given[1:]) if given else (None, ())
        if name == "join":
            sep = rest[0] if rest else kwargs.get("d", "")
            items = list(value) if not isinstance(value, str | list | tuple) else value
            if isinstance(sep, str) and isinstance(items, list | tuple):
                _check_size("join", len(sep) * len(items) + _weight(items, MAX_OUTPUT))
            args = (*args[: len(args) - len(given)], items, *rest)
        elif name == "replace":
            _check_call("replace", str(value), tuple(rest), {})
        elif name == "format":
            _check_format(value)
            _check_call(name, None, tuple(rest), kwargs)
        else:
            _check_call(name, None, tuple(rest), kwargs)
        return func(*args, **kwargs)

    return checked


# Jinja's filters that build a string from a size given in their arguments.
_SIZED_FILTERS = ("center", "indent", "join", "replace", "format")
# Calls (string methods and filters) whose integer arguments are a width to pad to.
_WIDTH_CALLS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "format"})


class EmailSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the arithmetic that allocates checked."""

    template_class = _BudgetedTemplate

    intercepted_binops = frozenset({"*", "**", "%"})
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

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Every loop counts its steps against the render's budget.
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, _STEPS_FILTER, [], [], None, None, lineno=loop.iter.lineno
            )
        return tree

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_call(getattr(__obj, "__name__", ""), owner, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja wraps str.format where it is looked up, so calls that skip
        # ``call`` are sandboxed too: its size is checked in the same place.
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        spec = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_call("format", spec, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

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
        if operator == "%":
            _check_format(left)
            return left % right
        for seq, times in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(times, int)
                and _weight(seq, MAX_REPEAT) * times > MAX_REPEAT
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
    for name in _SIZED_FILTERS:
        if name in env.filters:
            env.filters[name] = _checked_filter(name, env.filters[name])
    env.filters[_STEPS_FILTER] = _counted
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
