"""``outbox``: each email as files in a folder, the demo's default.

``<name>.eml`` is the whole MIME message (a mail client opens it) and
``<name>.html`` its HTML part (a browser opens it); ``<name>`` is the
idempotency key made safe for file names. Each file is written to a temporary
file beside it and renamed into place, the .html first and the .eml last, so
an .eml that exists is complete and means delivered: after a crash that is
what ``confirm`` looks at, and a message is never written twice.

Settings: ``[esp.outbox]`` with ``folder`` (default ``outbox``, relative to
the working directory) and ``from``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from core import EspConnector, RenderedEmail, TemporaryFailure, hookimpl

SECTION = "esp.outbox"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
STEM_MAX_LENGTH = 160


class OutboxSettings(BaseModel):
    """``[esp.outbox]``: where the files go and who they are from."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    folder: Path = Path("outbox")
    from_: str = Field(default="segflow <noreply@localhost>", alias="from")


def file_stem(key: str) -> str:
    """The file name (without suffix) for an idempotency key: the key itself when
    it is safe; else made safe, with a hash of the key so two keys never share it."""
    stem = UNSAFE.sub("_", key)[:STEM_MAX_LENGTH]
    if stem != key or stem.startswith("."):
        stem = f"{stem.lstrip('.')}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return stem


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` entirely or is untouched, whenever the process dies."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_outbox(settings) -> Iterator[OutboxSettings]:
    config = settings.plugin(SECTION)
    try:
        config.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TemporaryFailure(f"outbox folder {config.folder}: {exc.strerror}") from None
    yield config


def send(email: RenderedEmail, message: EmailMessage, config: OutboxSettings) -> str:
    stem = file_stem(email.idempotency_key)
    try:
        write_atomically(config.folder / f"{stem}.html", email.html.encode())
        write_atomically(config.folder / f"{stem}.eml", message.as_bytes())
    except OSError as exc:
        # The .eml is written last: without it nothing was delivered.
        raise TemporaryFailure(f"outbox {config.folder}: {exc.strerror or exc}") from None
    return f"{stem}.eml"


def confirm(email: RenderedEmail, message: EmailMessage, config: OutboxSettings) -> str | None:
    name = f"{file_stem(email.idempotency_key)}.eml"
    return name if (config.folder / name).is_file() else None


@hookimpl
def register_settings(register) -> None:
    register(SECTION, OutboxSettings)


@hookimpl
def register_esp_connectors(register) -> None:
    register(
        EspConnector(
            "outbox",
            f"Write each email as .eml and .html files to a folder ([{SECTION}] folder)",
            send=send,
            sender=lambda settings: settings.plugin(SECTION).from_,
            open=open_outbox,
            confirm=confirm,
        )
    )
