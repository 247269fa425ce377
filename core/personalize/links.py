"""Tracking, added once after rendering: click links, the open pixel, unsubscribe headers.

Templates write plain links; here every ``href`` of an ``<a>`` or ``<area>``
in the HTML and every http(s) URL in the text part becomes a signed click
link (``core.tracking.click_url``), except ``mailto:``, ``tel:``, ``#``
anchors, anything else that is not http(s), and the unsubscribe link
itself. One destination is one link number in both parts, in the order of
first appearance, so reports can tell the links apart.

The HTML is scanned with a regular expression over its attributes, not an
HTML parser: it runs on the CSS inliner's output, which html5ever has
re-serialised, so every tag and attribute name is lower case, every
attribute value is double-quoted with ``"`` written ``&quot;`` and ``&``
written ``&amp;``, and text never holds a raw ``<``. Over that form the
expression below finds exactly the ``href`` attributes the standard
library's ``html.parser`` finds (tests/test_personalize_links.py checks it on
every built-in template and on generated markup), at a small fraction of its
cost. Comments, ``<style>`` and ``<script>`` are left as they are.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from core.tracking import click_url, open_url, unsubscribe_url

# A comment or raw-text element (left alone), or an a/area start tag with an
# href attribute: groups are (the tag after its "<" up to the value's opening
# quote, the value). One leading "<" lets the engine skip to the next tag.
HTML_LINK = re.compile(
    r"<(?:!--.*?-->|(?:style|script)\b.*?</(?:style|script)>"
    r'|((?:a|area)(?: [^\s="/>]+="[^"]*")*? href=")([^"]*)")',
    re.S,
)
# http(s) URLs in text; trailing punctuation belongs to the sentence.
TEXT_URL = re.compile(r"https?://[^\s<>\"'\]\)]+")
TRAILING = ".,;:!?"
PIXEL = (
    '<img src="{src}" width="1" height="1" alt="" '
    'style="display:block;width:1px;height:1px;border:0;">'
)
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass
class Links:
    """Numbers destinations and signs their click links for one message."""

    sign: Callable[[str, int], str]  # (destination, link number) -> click URL
    unsubscribe_url: str
    # destination -> its click link (None: left as it is), numbered in this order
    signed: dict[str, str | None] = field(default_factory=dict)

    def tracked(self, url: str) -> str | None:
        """The click link for ``url``, or None when it stays as it is."""
        if url in self.signed:
            return self.signed[url]
        signed = None
        if url != self.unsubscribe_url and url.startswith(("http://", "https://")):
            number = sum(1 for s in self.signed.values() if s is not None) + 1
            try:
                signed = self.sign(url, number)
            except ValueError:  # no host: not a destination a redirect can go to
                signed = None
        self.signed[url] = signed
        return signed


def rewrite_html(markup: str, links: Links) -> str:
    def replace(found: re.Match[str]) -> str:
        head = found.group(1)
        if head is None:
            return found.group(0)
        url = html.unescape(found.group(2)).strip()
        signed = links.tracked(url)
        if signed is None:
            return found.group(0)
        return f'<{head}{html.escape(signed)}"'

    return HTML_LINK.sub(replace, markup)


def rewrite_text(text: str, links: Links) -> str:
    def replace(found: re.Match[str]) -> str:
        url = found.group(0)
        stripped = url.rstrip(TRAILING)
        signed = links.tracked(stripped)
        if signed is None:
            return url
        return signed + url[len(stripped) :]

    return TEXT_URL.sub(replace, text)


def add_pixel(markup: str, src: str) -> str:
    """The open pixel just before ``</body>`` (at the end when there is none)."""
    pixel = PIXEL.format(src=html.escape(src))
    at = markup.rfind("</body>")
    return markup + pixel if at < 0 else markup[:at] + pixel + markup[at:]


def unsubscribe_headers(url: str) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: a POST to ``url`` unsubscribes."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": ONE_CLICK}


@dataclass(frozen=True)
class Recipient:
    """Who the tracking tokens name, and the secret and address they use."""

    base_url: str
    secret: str
    message_id: str
    user_id: str | None
    email: str | None
    campaign: str | None

    def _who(self) -> dict[str, str | None]:
        return {
            "message_id": self.message_id,
            "user_id": self.user_id,
            "email": self.email,
            "campaign": self.campaign,
        }

    def click(self, destination: str, number: int) -> str:
        return click_url(self.base_url, self.secret, destination, link=number, **self._who())

    def open(self) -> str:
        return open_url(self.base_url, self.secret, **self._who())

    def unsubscribe(self) -> str:
        return unsubscribe_url(self.base_url, self.secret, **self._who())


def track(markup: str, text: str, recipient: Recipient, unsubscribe: str) -> tuple[str, str]:
    """Both parts with their links signed (all but ``unsubscribe``), and the pixel in the HTML."""
    links = Links(recipient.click, unsubscribe)
    markup = rewrite_html(markup, links)
    text = rewrite_text(text, links)
    return add_pixel(markup, recipient.open()), text
