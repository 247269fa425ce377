"""Shared pieces of the benchmarks: the Result row, timing, progress, machine facts."""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import os
import platform
import pstats
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / ".results"  # git-ignored: profiles etc.

console = Console()
if not console.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
    console = Console(width=160)

# Set by bench.run --profile: timed blocks marked profile=True run under cProfile.
PROFILE = False
# Set by bench.run --repeat: repetitions per case (the fastest counts).
REPEAT: int | None = None
# --scale: the data sizes of benchmarks that honour it times this (None: full).
SCALE: float | None = None


def repeats(quick: bool) -> int:
    """How often each case runs: --repeat, else 3 (quick) or 2; 1 when profiling."""
    if PROFILE:
        return 1
    return REPEAT or (3 if quick else 2)


@dataclass
class Result:
    """One row of a benchmark's table.

    ``ratio`` is this case's seconds divided by its baseline's seconds (same run).
    ``passed`` is None when the row has no target (a baseline, or skipped).
    """

    case: str
    events: int
    seconds: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    # Why the row fails: missed targets and failed verifications.
    failures: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        """A failed verification: the row fails whatever its figures."""
        self.failures.append(reason)
        self.passed = False

    @property
    def rate(self) -> float | None:
        if not self.seconds:
            return None
        return self.events / self.seconds

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        if self.passed is None:
            return "-"  # no target
        return "pass" if self.passed else "FAIL"

    def check(self, *, min_rate: float | None = None, max_ratio: float | None = None) -> Result:
        """Set the target text and pass/fail from the measured figures."""
        parts: list[str] = []
        if min_rate is not None:
            parts.append(f">= {min_rate:,.0f} events/s")
            if self.rate is None or self.rate < min_rate:
                self.failures.append(f"below {min_rate:,.0f} events/s")
        if max_ratio is not None:
            parts.append(f"<= {max_ratio:g}x baseline")
            if self.ratio is None or self.ratio > max_ratio:
                self.failures.append(f"more than {max_ratio:g}x the baseline's time")
        self.target = ", ".join(parts)
        if parts or self.failures:
            self.passed = not self.failures
        return self


def ratio(seconds: float | None, baseline: float | None) -> float | None:
    if not seconds or not baseline:
        return None
    return seconds / baseline


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        refresh_per_second=4,
    )


@contextlib.contextmanager
def timer(name: str = "", *, profile: bool = False) -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` holds the wall-clock seconds.

    Under ``bench.run --profile`` a block with ``profile=True`` runs under
    cProfile: the stats go to bench/.results/<name>.prof and the top 20 by
    tottime are printed (the seconds are then inflated by the profiler).
    """
    out: list[float] = [0.0]
    prof = cProfile.Profile() if (profile and PROFILE) else None
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    try:
        yield out
    finally:
        if prof is not None:
            prof.disable()
        out[0] = time.perf_counter() - t0
        if prof is not None:
            _report_profile(prof, name or "profile")


def _report_profile(prof: cProfile.Profile, name: str) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = RESULTS_DIR / f"{safe}.prof"
    prof.dump_stats(path)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    console.print(f"[bold]cProfile of {name}[/] (top 20 by tottime; full stats in {path})")
    console.print(buf.getvalue(), markup=False, highlight=False)


@contextlib.contextmanager
def scratch_dir(prefix: str = "segflow-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, str]:
    return {
        "nproc": str(nproc()),
        "CPU": cpu_model(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "OS": f"{platform.system()} {platform.release()}",
    }


def start_pg_server() -> tuple[Any, str | None]:
    """A throwaway PostgreSQL server (tests/pgserver.py), or why there is none.

    Returns ``(server, None)``, or ``(None, reason)`` for the cases to be
    recorded as skipped. The caller stops the server.
    """
    import importlib.util
    import sys

    path = ROOT / "tests" / "pgserver.py"
    spec = importlib.util.spec_from_file_location("_segflow_bench_pgserver", path)
    if spec is None or spec.loader is None:
        return None, f"cannot import {path}"
    pgs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pgs
    try:
        spec.loader.exec_module(pgs)
    except ImportError as exc:
        return None, f"cannot import tests/pgserver.py: {exc}"
    bindir = pgs.find_pg_bindir()
    if bindir is None:
        return None, "PostgreSQL binaries (initdb, pg_ctl) not found; run `make system-deps`"
    try:
        return pgs.PgServer(bindir).start(), None
    except pgs.PgServerError as exc:
        return None, f"PostgreSQL server did not start: {str(exc).splitlines()[0]}"


class Quiet:
    """gc.collect + gc.freeze around a timed block, on both sides alike.

    The materialised input is the harness's, not the workload's: frozen, the
    collector does not walk it during either side's timing.
    """

    def __enter__(self) -> Quiet:
        gc.collect()
        gc.freeze()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.unfreeze()


def best_of(case: str, n: int, attempts: list[Any], precision: int = 2) -> Result:
    """The fastest repetition's time, with the notes and failures of all of them.

    An attempt is anything with ``seconds`` and optionally ``notes`` and
    ``failures`` lists.
    """
    r = Result(case, n, min(a.seconds for a in attempts))
    if len(attempts) > 1:
        times = ", ".join(f"{a.seconds:.{precision}f}" for a in attempts)
        r.notes.append(f"best of {len(attempts)} runs ({times} s)")
    for a in attempts:
        r.notes += [x for x in getattr(a, "notes", ()) if x not in r.notes]
        for x in getattr(a, "failures", ()):
            if x not in r.failures:
                r.fail(x)
    return r


# -- stores built by the benchmarks (prepared, not timed) --------------------------------


def remove_sqlite(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL folded in), for a run of its own."""
    remove_sqlite(dst)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def ingest_events(
    url: str, events: Iterable[dict[str, Any]], total: int, label: str, source: str = "bench"
) -> dict[str, Any]:
    """Ingest ``events`` (about ``total`` of them) with a progress bar, as a bulk load.

    Returns what the store holds: events, profiles, merged profiles and the
    load's seconds; raises when any event was rejected or a duplicate.
    """
    import sqlalchemy as sa

    from core.db import open_db
    from core.ingestion import ingest

    engine = open_db(url)
    try:
        with progress() as prog:
            task = prog.add_task(f"{label}: ingesting", total=total)
            t0 = time.perf_counter()
            report = ingest(
                engine,
                events,
                source=source,
                bulk=True,
                on_progress=lambda k: prog.update(task, advance=k),
            )
            seconds = time.perf_counter() - t0
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
            profiles = conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one()
    finally:
        engine.dispose()
    if report.rejected or report.duplicates:
        raise RuntimeError(
            f"{label} ingest: {len(report.rejected)} rejected, {report.duplicates} duplicates"
        )
    return {
        "events": stored,
        "profiles": profiles,
        "merged": report.profiles_merged,
        "build_seconds": round(seconds, 1),
    }


def sqlite_cache(
    key: str, events: int, build: Callable[[str], dict[str, Any]]
) -> tuple[Path, dict[str, Any]]:
    """The SQLite database cached under bench/.results/ as ``key`` + schema revision.

    ``build(url)`` fills a fresh database (not timed) and returns its facts
    (``events`` at least); a cached file is reused when it holds ``events``
    events. The cache is one self-contained file (journal_mode=DELETE): copy
    it (``copy_sqlite``) before a run writes to it.
    """
    import json

    from core.db import head_revision

    RESULTS_DIR.mkdir(exist_ok=True)
    key = f"{key}-rev{head_revision()}"
    path = RESULTS_DIR / f"{key}.db"
    meta_path = RESULTS_DIR / f"{key}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()
        if stored == events:
            meta["cached"] = True
            return path, meta
        console.print(f"{path.name}: {stored:,} events, expected {events:,}; rebuilding")
    tmp = path.with_name(path.stem + ".building.db")
    remove_sqlite(tmp)
    meta_path.unlink(missing_ok=True)
    meta = build(f"sqlite:///{tmp}")
    con = sqlite3.connect(tmp)
    try:  # fold the WAL into the file so the cache is one self-contained file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    remove_sqlite(path)
    tmp.rename(path)
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    meta["cached"] = False
    return path, meta


# -- child processes ------------------------------------------------------------------------


@dataclass
class ChildRun:
    """A finished child process: wall seconds, exit status, output, peak RSS."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_bytes: int


def run_child(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ChildRun:
    """Run ``argv`` to its end; its own peak RSS comes from wait4 (Linux: KiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            seconds,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_maxrss * 1024,
        )


def compiled_env() -> dict[str, str]:
    """This process's environment for a timed child command, without
    PYTHONDONTWRITEBYTECODE (set in some sandboxes): it would make every
    command recompile every module, where users' installs run from bytecode."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
