"""``segflow render``: a person's email as a marketer checks it in a browser.

A preview renders with tracking off: links point where the template says, no
open pixel, and the unsubscribe link leads nowhere, so opening or clicking
around a preview records nothing and unsubscribes no one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from core.personalize.render import render_email, size_warning
from core.profiles import find_profile_id
from core.types import RenderedEmail

if TYPE_CHECKING:
    from core.config import Settings

PREVIEW_DIR = Path("previews")


@dataclass(frozen=True)
class Preview:
    email: RenderedEmail
    html_path: Path
    text_path: Path
    warning: str | None  # Gmail would clip it


def write_preview(
    engine: Engine,
    template: str,
    who: str,
    *,
    settings: Settings,
    out: Path | None = None,
    as_of: datetime | None = None,
) -> Preview:
    """Render ``template`` for the person known as ``who`` (user id, anonymous
    id or email) with tracking off; write the HTML to ``out`` (default
    ``previews/TEMPLATE-PROFILE.html``) and the text part beside it (``.txt``)."""
    with engine.connect() as conn:
        profile_id = find_profile_id(conn, who)
        email = render_email(
            conn, template, profile_id, as_of=as_of, tracking=False, settings=settings
        )
    html_path = out or PREVIEW_DIR / f"{email.template.replace('/', '-')}-{profile_id}.html"
    text_path = html_path.with_suffix(".txt")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(email.html, encoding="utf-8")
    text_path.write_text(f"Subject: {email.subject}\n\n{email.text}", encoding="utf-8")
    return Preview(email, html_path, text_path, size_warning(email))
