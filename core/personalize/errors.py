"""The one error rendering raises: a template problem, located."""

from __future__ import annotations

from core.types import CommandError


class TemplateError(CommandError):
    """A template cannot be found, parsed or rendered, or asked for something
    the sandbox refuses. The message is one line and starts with where:
    ``templates/cart_abandonment.html.j2:12: 'first_nam' is undefined``.

    A CommandError, so the CLI prints it on one line (exit status 1).
    """
