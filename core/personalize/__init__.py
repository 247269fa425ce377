"""Personalised email: rendering, MIME, the messages outbox and delivery.

Rendering: sandboxed Jinja2 templates, the person's context, central tracking
and CSS inlining (``render_email``), and the export of segment-aware blocks to
ESPs' own template languages (``export_template``). Delivery: ``mime``,
``messages`` and ``delivery``.

Names load on first use, so importing the package costs nothing until a
template is rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

_LAZY = {
    "render_email": "core.personalize.render",
    "size_warning": "core.personalize.render",
    "GMAIL_CLIP_BYTES": "core.personalize.render",
    "TemplateError": "core.personalize.errors",
    "TemplateSet": "core.personalize.templates",
    "export_template": "core.personalize.export",
    "write_preview": "core.personalize.preview",
}

__all__ = [
    "GMAIL_CLIP_BYTES",
    "TemplateError",
    "TemplateSet",
    "export_template",
    "render_email",
    "size_warning",
    "write_preview",
]


__getattr__ = lazy_exports(__name__, _LAZY)


if TYPE_CHECKING:
    from core.personalize.errors import TemplateError
    from core.personalize.export import export_template
    from core.personalize.preview import write_preview
    from core.personalize.render import GMAIL_CLIP_BYTES, render_email, size_warning
    from core.personalize.templates import TemplateSet
