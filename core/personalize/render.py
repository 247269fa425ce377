"""``render_email``: one person's email from a template, ready for delivery.

The steps, in order: the compiled template (kept per process), the person's
context from the database (core/personalize/context.py) plus what plugins
add (``template_context``), the subject, HTML and text parts rendered in the
sandbox, the CSS inlined into the HTML (css-inline), then, unless it is a
preview, tracking: signed click links, the open pixel and the one-click
unsubscribe headers (core/personalize/links.py). Templates never build
tracking URLs; a preview has none at all, so opening it records nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import css_inline
from jinja2.filters import FILTERS as JINJA_FILTERS
from sqlalchemy.engine import Connection, Engine

from core.personalize.context import Person, read_person, shopping
from core.personalize.errors import TemplateError
from core.personalize.filters import BUILTIN_FILTERS, locale_named, timezone_named
from core.personalize.links import Recipient, track, unsubscribe_headers
from core.personalize.templates import CompiledEmail, TemplateSet, template_set
from core.types import CommandError, RenderedEmail, TemplateMessage

if TYPE_CHECKING:
    import pluggy

    from core.config import EmailSettings, Settings

# (conn, profile_id, k=..., as_of=...) -> products (the product columns plus score)
Recommender = Callable[..., list[dict[str, Any]]]

# Gmail shows "[Message clipped]" and hides the rest (the pixel and the
# unsubscribe footer included) above this much HTML.
GMAIL_CLIP_BYTES = 102 * 1024
PREVIEW_PATH = "/t/u/preview"

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


def render_email(
    conn_or_engine: Connection | Engine,
    template: str,
    profile_id: int,
    *,
    as_of: datetime | None = None,
    tracking: bool = True,
    message_key: str | None = None,
    settings: Settings | None = None,
    recommendations: Recommender | None = None,
) -> RenderedEmail:
    """Render ``template`` for ``profile_id``.

    ``as_of`` reads the person's data as it was then (None: now).
    ``tracking=False`` is a preview: links as written, no pixel, no
    unsubscribe headers, and an unsubscribe link that leads nowhere.
    ``message_key`` is the idempotency key of the send (the tracking tokens
    carry it); by default ``template:profile_id:date``, one email of a
    template per person per day (``preview:`` before it for a preview).
    ``recommendations(conn, profile_id, k=..., as_of=...)`` serves the
    ``recommendations`` list (default ``core.recommend`` when it exists, else
    none). ``settings``: default ``load_settings()``.

    TemplateError for a template problem (naming file and line),
    ProfileNotFound, CommandError when tracking has no secret key.
    """
    if settings is None:
        from core.config import load_settings

        settings = load_settings()
    args = (template, profile_id, as_of, tracking, message_key, settings, recommendations)
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return _render(conn, *args)
    return _render(conn_or_engine, *args)


def templates_for(settings: Settings, pm: pluggy.PluginManager | None = None) -> TemplateSet:
    """The template set of these settings' folders and the plugins' filters."""
    return template_set(settings.email.templates, plugin_filters(pm))


# The plugins' filters per set of template_filters implementations: collected
# once, so a plugin that builds its functions afresh on each call does not
# make every render compile its templates again.
_FILTERS: dict[tuple[Any, ...], dict[str, Callable[..., Any]]] = {}


def plugin_filters(pm: pluggy.PluginManager | None = None) -> dict[str, Callable[..., Any]]:
    """The filters plugins register (``template_filters``)."""
    from core.plugins import get_manager

    hook = (pm or get_manager()).hook.template_filters
    key = tuple(hook.get_hookimpls())  # the implementations themselves: kept alive, never reused
    known = _FILTERS.get(key)
    if known is not None:
        return known
    found: dict[str, Callable[..., Any]] = {}

    def register(name: str, function: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise TemplateError(f"template filter name {name!r}: a Python identifier")
        if name in BUILTIN_FILTERS or name in JINJA_FILTERS:
            raise TemplateError(f"template filter {name!r} is built in; choose another name")
        if name in found:
            raise TemplateError(f"template filter {name!r} is registered twice")
        if not callable(function):
            raise TemplateError(f"template filter {name!r} is not callable")
        found[name] = function

    hook(register=register)
    _FILTERS[key] = found
    return found


def default_recommender() -> Recommender | None:
    """``core.recommend`` (the catalogue's recommender), when it is installed."""
    import core

    return getattr(core, "recommend", None)


def message_key_for(template: str, profile_id: int, as_of: datetime | None) -> str:
    day = (as_of or datetime.now(UTC)).astimezone(UTC).date().isoformat()
    return f"{template}:{profile_id}:{day}"


def size_warning(email: RenderedEmail) -> str | None:
    """A warning when the HTML is big enough for Gmail to clip it."""
    size = len(email.html.encode())
    if size <= GMAIL_CLIP_BYTES:
        return None
    return (
        f"{email.template}: the HTML is {size / 1024:.0f} KB; Gmail clips messages over "
        f"{GMAIL_CLIP_BYTES // 1024} KB, hiding the rest (footer, unsubscribe link, open pixel)"
    )


def _render(
    conn: Connection,
    name: str,
    profile_id: int,
    as_of: datetime | None,
    tracking: bool,
    message_key: str | None,
    settings: Settings,
    recommendations: Recommender | None,
) -> RenderedEmail:
    from core.plugins import get_manager

    pm = get_manager()
    config = settings.email
    templates = templates_for(settings, pm)
    compiled = templates.get(name)
    person = read_person(conn, profile_id, as_of)
    pid = person.profile_id
    key = message_key or message_key_for(compiled.name, pid, as_of)
    if not tracking and message_key is None:
        # A preview is never the send: its key must not stand in for the real one's.
        key = "preview:" + key
    recipient = None
    if tracking:
        if not settings.secret_key:
            raise CommandError(
                "tracked email needs a secret key to sign its links: set secret_key in "
                "segflow.toml (`segflow init` writes one) or SEGFLOW_SECRET_KEY"
            )
        if not (person.user_id or person.email):
            raise CommandError(
                f"profile {pid} has neither a user id nor an email: a tracked email "
                "cannot name its recipient"
            )
        recipient = Recipient(
            config.base_url, settings.secret_key, key, person.user_id, person.email, compiled.name
        )
        unsubscribe = recipient.unsubscribe()
    else:
        unsubscribe = config.base_url.rstrip("/") + PREVIEW_PATH
    message = TemplateMessage(compiled.name, compiled.version, key, pid, not tracking, as_of)
    context = _context(conn, person, config, unsubscribe, message, recommendations)
    for extra in pm.hook.template_context(profile=context["profile"], message=message):
        _merge(context, extra)
    subject, markup, text = render_parts(templates, compiled, context)
    headers: dict[str, str] = {}
    if recipient is not None:
        markup, text = track(markup, text, recipient, unsubscribe)
        headers = unsubscribe_headers(unsubscribe)
    return RenderedEmail(
        profile_id=pid,
        to=person.email or "",
        template=compiled.name,
        version=compiled.version,
        subject=subject,
        html=markup,
        text=text,
        headers=headers,
        idempotency_key=key,
        marketing=compiled.marketing,
    )


def render_parts(
    templates: TemplateSet, compiled: CompiledEmail, context: Mapping[str, Any]
) -> tuple[str, str, str]:
    """Subject (one line), HTML (CSS inlined) and text of ``compiled`` in
    ``context``; no tracking. TemplateError naming the file and line of a failure."""
    subject_at = f"{compiled.html_file}:{compiled.subject_line}"
    subject = " ".join(_run(templates, compiled.subject, context, subject_at).split())
    markup = _run(templates, compiled.html, context, compiled.html_file)
    text = _run(templates, compiled.text, context, compiled.text_file)
    try:
        markup = _INLINER.inline(markup)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(f"{compiled.html_file}: inlining its CSS failed: {exc}") from None
    return subject, markup, text


def _run(templates: TemplateSet, template: Any, context: Mapping[str, Any], where: str) -> str:
    try:
        return template.render(context)
    except Exception as exc:  # every failure in a template is the template's, located
        raise templates.error(exc, where) from None


def _context(
    conn: Connection,
    person: Person,
    config: EmailSettings,
    unsubscribe: str,
    message: TemplateMessage,
    recommendations: Recommender | None,
) -> dict[str, Any]:
    attributes = person.attributes
    locale = _valid(attributes.get("locale"), locale_named) or config.locale
    timezone = _valid(attributes.get("timezone"), timezone_named) or config.timezone
    bought = shopping(conn, person, config.recently_viewed, config.currency)
    recommend = recommendations or default_recommender()
    recommended = []
    if recommend is not None and config.recommendations:
        recommended = list(
            recommend(conn, person.profile_id, k=config.recommendations, as_of=message.as_of)
        )
    profile = {
        "id": person.profile_id,
        "user_id": person.user_id,
        "email": person.email,
        "first_name": attributes.get("first_name"),
        "last_name": attributes.get("last_name"),
        "attributes": attributes,
        "consent": person.consent,
        "locale": locale,
        "timezone": timezone,
    }
    return {
        "profile": profile,
        "segments": person.segments,
        "scores": person.scores,
        "cart": bought.cart,
        "recently_viewed": bought.recently_viewed,
        "recommendations": recommended,
        "unsubscribe_url": unsubscribe,
        "preferences_url": config.preferences_url or unsubscribe,
        "site_url": config.site_url.rstrip("/"),
        "company": config.company,
        "postal_address": config.postal_address,
        "locale": locale,
        "timezone": timezone,
        "currency": bought.cart.currency or config.currency,
        "message": message,
        "now": message.as_of or datetime.now(UTC),
    }


def _valid(value: Any, check: Callable[[str], Any]) -> str | None:
    """A profile's locale / timezone when it is one; data is not trusted to be."""
    if not isinstance(value, str) or not value:
        return None
    try:
        check(value)
    except ValueError:
        return None
    return value


def _merge(context: dict[str, Any], extra: Mapping[str, Any] | None) -> None:
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise TemplateError(
            f"a template_context hook returned {type(extra).__name__}, not a mapping"
        )
    for name, value in extra.items():
        if name in context:
            raise TemplateError(
                f"template_context: {name!r} is already in the context; choose another name"
            )
        context[name] = value
