"""Email templates on disk: finding, compiling once, and their front matter.

An email template NAME is two files in a template folder: ``NAME.html.j2``
(the HTML part) and ``NAME.txt.j2`` (the text part), both Jinja2. The folders
are the ``[email] templates`` settings, in order, then the built-in
``templates/`` folder at the top of the project; a file in an earlier folder
wins, so an installation overrides a built-in template or partial by writing
one of the same name. Partials and layouts (``partials/``, ``layouts/``) are
found the same way.

The HTML file starts with its front matter, a Jinja comment of ``key: value``
lines, so the file stays a plain template::

    {#
    subject: {{ profile.first_name or "Hello" }}, your cart is waiting
    description: Cart reminder with the cart lines and related products
    marketing: true
    #}
    {% extends "layouts/base.html.j2" %}

``subject`` (required) is itself a template, rendered like the text part (no
HTML escaping) and folded onto one line; ``marketing`` (default true) says
whether the consent gate applies; ``description`` is shown by
``segflow templates list``.

Each template is compiled once per process and kept (``TemplateSet``); its
``version`` is a digest of its sources and those of the partials and layouts
it names, so a message records exactly which text it was rendered from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, Template, TemplateNotFound, TemplateSyntaxError, meta

from core.personalize.context import Cart, CartLine
from core.personalize.errors import TemplateError
from core.personalize.filters import BUILTIN_FILTERS
from core.personalize.sandbox import EmailSandbox, environment, located
from core.types import TemplateMessage

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
HTML_SUFFIX = ".html.j2"
TEXT_SUFFIX = ".txt.j2"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_][A-Za-z0-9_-]*)*$")
FRONT_MATTER = re.compile(r"\A(\s*)\{#-?(.*?)-?#\}", re.S)
FRONT_KEYS = ("subject", "description", "marketing")


@dataclass(frozen=True)
class CompiledEmail:
    """One email template, compiled: its HTML, text and subject templates."""

    name: str
    html: Template
    text: Template
    subject: Template
    subject_line: int  # where the subject is written, for its errors
    marketing: bool
    description: str
    version: str
    html_file: str  # as shown in messages
    text_file: str


def shown(filename: str) -> str:
    """A template file as messages show it: relative to the working directory
    when it is below it."""
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def front_matter(source: str, file: str) -> tuple[dict[str, str], dict[str, int]]:
    """The ``key: value`` lines of the leading comment, and the line of each key."""
    found = FRONT_MATTER.match(source)
    if found is None:
        raise TemplateError(f"{file}:1: no front matter: start the file with {{# subject: ... #}}")
    first = found.group(1).count("\n") + 1
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for offset, line in enumerate(found.group(2).split("\n")):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in FRONT_KEYS:
            raise TemplateError(
                f"{file}:{first + offset}: front matter lines are 'key: value' with a key "
                f"of {', '.join(FRONT_KEYS)}; got {line.strip()!r}"
            )
        if key in values:
            raise TemplateError(f"{file}:{first + offset}: {key} is given twice")
        values[key] = value.strip()
        lines[key] = first + offset
    if not values.get("subject"):
        raise TemplateError(f"{file}:{first}: the front matter has no subject")
    return values, lines


def _flag(value: str, file: str, line: int) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    raise TemplateError(f"{file}:{line}: marketing: true or false, not {value!r}")


class TemplateSet:
    """The template folders, the two environments over them and what is compiled.

    Built once per folder list and set of plugin filters (``template_set``)
    and shared; compiling is the slow part of rendering, so a template is
    compiled on first use and kept.
    """

    def __init__(self, folders: Sequence[Path], filters: Mapping[str, Callable] | None = None):
        self.folders = [Path(f) for f in folders]
        if TEMPLATES_DIR not in self.folders:
            self.folders.append(TEMPLATES_DIR)
        self.loader = FileSystemLoader([str(f) for f in self.folders])
        every = {**BUILTIN_FILTERS, **(filters or {})}
        plain = frozenset({Cart, CartLine, TemplateMessage})
        self.html_env = environment(html=True, loader=self.loader, filters=every, plain_types=plain)
        self.text_env = environment(
            html=False, loader=self.loader, filters=every, plain_types=plain
        )
        self._compiled: dict[str, CompiledEmail] = {}
        self._shown: dict[str, str] = {}

    def names(self) -> list[str]:
        """Every email template (an ``.html.j2`` at the top of a folder)."""
        found = {
            path.name.removesuffix(HTML_SUFFIX)
            for folder in self.folders
            if folder.is_dir()
            for path in folder.glob(f"*{HTML_SUFFIX}")
        }
        return sorted(found)

    def get(self, name: str) -> CompiledEmail:
        """The compiled template NAME (``cart_abandonment``; a suffix is ignored)."""
        name = name.removesuffix(HTML_SUFFIX).removesuffix(TEXT_SUFFIX)
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = self._compiled[name] = self._compile(name)
        return compiled

    def error(self, exc: BaseException, fallback: str) -> TemplateError:
        """``exc`` from rendering, located in the template file and line it came from."""
        return located(exc, self._template_file, fallback)

    def _template_file(self, filename: str) -> str | None:
        if filename in self._shown:
            return self._shown[filename]
        return shown(filename) if filename.endswith(".j2") else None

    def _compile(self, name: str) -> CompiledEmail:
        if not NAME.match(name):
            raise TemplateError(
                f"template name {name!r}: letters, digits, _ and - (folders with /)"
            )
        html_name, text_name = name + HTML_SUFFIX, name + TEXT_SUFFIX
        html_source, html_file = self._source(html_name, name)
        try:
            text_source, text_file = self._source(text_name, name)
        except TemplateError:
            raise TemplateError(f"{html_file}: no text part: write {text_name} beside it") from None
        values, lines = front_matter(html_source, html_file)
        try:
            html = self.html_env.get_template(html_name)
            text = self.text_env.get_template(text_name)
        except Exception as exc:  # syntax errors, missing partials
            raise self.error(exc, html_file) from None
        subject_line = lines["subject"]
        try:
            subject = self.text_env.from_string(values["subject"])
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"{html_file}:{subject_line}: syntax error in the subject: {exc.message}"
            ) from None
        marketing = _flag(values.get("marketing", "true"), html_file, lines.get("marketing", 1))
        sources = [html_source, text_source, values["subject"]]
        sources += self._referenced(self.html_env, html_source, {html_name})
        sources += self._referenced(self.text_env, text_source, {text_name})
        version = hashlib.sha256("\0".join(sources).encode()).hexdigest()[:12]
        return CompiledEmail(
            name=name,
            html=html,
            text=text,
            subject=subject,
            subject_line=subject_line,
            marketing=marketing,
            description=values.get("description", ""),
            version=version,
            html_file=html_file,
            text_file=text_file,
        )

    def _source(self, template: str, name: str) -> tuple[str, str]:
        try:
            source, filename, _ = self.loader.get_source(self.html_env, template)
        except TemplateNotFound:
            folders = ", ".join(shown(str(f)) for f in self.folders)
            raise TemplateError(f"no template {name!r} ({template} in {folders})") from None
        file = shown(filename)
        self._shown[filename] = file
        return source, file

    def _referenced(self, env: EmailSandbox, source: str, seen: set[str]) -> list[str]:
        """Sources of the templates ``source`` extends, includes or imports, recursively
        (names built at render time cannot be known and are left out)."""
        out: list[str] = []
        try:
            names: Iterable[Any] = meta.find_referenced_templates(env.parse(source))
        except Exception:  # already reported by get_template
            return out
        for ref in names:
            if not isinstance(ref, str) or ref in seen:
                continue
            seen.add(ref)
            ref_source, _ = self._source(ref, ref)
            out.append(ref_source)
            out += self._referenced(env, ref_source, seen)
        return out


# One TemplateSet per (folders, plugin filters): compiled templates are kept
# across renders, and a new set is made when plugins bring other filters.
_SETS: dict[tuple[Any, ...], TemplateSet] = {}


def template_set(folders: Sequence[Path], filters: Mapping[str, Callable]) -> TemplateSet:
    key = (
        tuple(str(Path(f).resolve()) for f in folders),
        tuple((name, id(fn)) for name, fn in sorted(filters.items())),
    )
    found = _SETS.get(key)
    if found is None:
        found = _SETS[key] = TemplateSet(folders, filters)
    return found


def forget_compiled() -> None:
    """Drop every compiled template (after editing template files in a long-running process)."""
    _SETS.clear()
