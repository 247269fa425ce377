"""Run the marimo notebooks (analyst dashboards) against a database.

The notebooks read ``SEGFLOW_DATABASE_URL``; this module hands them the
database by that variable, as an absolute URL so their working directory does
not matter. marimo runs in a child process: ``import core`` never loads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookNotFound(LookupError):
    pass


def notebook_names() -> list[str]:
    """The notebooks ``segflow dashboard NAME`` serves: the marimo apps in notebooks/."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.py") if not p.name.startswith("_"))


def notebook_path(name: str) -> Path:
    """notebooks/<name>.py (the ``.py`` may be given); an unknown name raises
    NotebookNotFound listing the known ones."""
    stem = name.removesuffix(".py")
    names = notebook_names()
    if stem not in names:
        raise NotebookNotFound(f"no dashboard named {name!r}; dashboards: {', '.join(names)}")
    return NOTEBOOKS / f"{stem}.py"


def absolute_database_url(url: str) -> str:
    """The URL with a relative SQLite path made absolute, so any working directory works."""
    sa_url = sa.make_url(url)
    database = sa_url.database
    if sa_url.get_backend_name() == "sqlite" and database and database != ":memory:":
        path = Path(database).expanduser()
        if not path.is_absolute():
            return sa_url.set(database=str(path.resolve())).render_as_string(hide_password=False)
    return url


def run_notebook(
    name: str,
    database_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 2718,
    headless: bool = False,
    export_html: Path | None = None,
) -> int:
    """Serve ``notebooks/<name>`` with ``marimo run`` until it stops, or export it
    once as static HTML (no code) to ``export_html``. Returns marimo's exit status
    (128+N when killed by signal N)."""
    notebook = NOTEBOOKS / name
    if not notebook.is_file():
        raise NotebookNotFound(f"{notebook}: notebook not found")
    env = os.environ | {"SEGFLOW_DATABASE_URL": absolute_database_url(database_url)}
    marimo = [sys.executable, "-m", "marimo"]
    if export_html is not None:
        command = [*marimo, "export", "html", str(notebook), "-o", str(export_html)]
        command += ["--no-include-code", "--force"]
    else:
        command = [*marimo, "run", str(notebook), "--host", host, "--port", str(port)]
        if headless:
            command.append("--headless")
    with subprocess.Popen(command, env=env) as child:
        # Pass a SIGTERM on (Ctrl-C reaches both already), so marimo never outlives us.
        forward = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate()) if forward else None
        try:
            status = child.wait()
        finally:
            if forward:
                signal.signal(signal.SIGTERM, previous)
    return 128 - status if status < 0 else status
