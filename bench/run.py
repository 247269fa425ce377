"""Run the benchmarks and rewrite the results section of bench/README.md.

    python -m bench.run                  # all benchmarks, full size
    python -m bench.run import_bulk      # only the ones named
    python -m bench.run --quick          # small sizes, to check the harness
    python -m bench.run --scale 0.25 segments  # a share of the full sizes
    python -m bench.run --profile NAME   # cProfile segflow's timed calls (README untouched)

Exit status 1 when a row fails its target or its verification.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from rich.table import Table

from bench import common
from bench.common import Result

# Every benchmark module in bench/, run in this order by default.
BENCHMARKS = (
    "import_bulk",
    "points",
    "segments",
    "fit_bgnbd",
    "api",
    "render",
    "recommend",
    "automation",
    "sync",
    "campaigns",
    "monitoring",
    "dashboard",
    "privacy",
)

README = Path(__file__).resolve().parent / "README.md"
MARKER = "<!-- results -->"


@dataclass
class Outcome:
    name: str
    module: ModuleType
    results: list[Result]
    seconds: float


def _fmt_seconds(s: float | None) -> str:
    return "" if s is None else f"{s:.2f}"


def _fmt_rate(r: float | None) -> str:
    return "" if r is None else f"{r:,.0f}"


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def _cells(r: Result) -> list[str]:
    return [
        r.case,
        f"{r.events:,}",
        _fmt_seconds(r.seconds),
        _fmt_rate(r.rate),
        _fmt_ratio(r.ratio),
        r.target or "-",
        r.status,
    ]


HEADERS = ("case", "events", "seconds", "events/s", "ratio to baseline", "target", "result")


def print_table(outcome: Outcome) -> None:
    title = getattr(outcome.module, "TITLE", outcome.name)
    table = Table(title=f"{outcome.name}: {title}", title_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="right" if h in ("events", "seconds", "events/s") else "left")
    for r in outcome.results:
        style = {True: "green", False: "bold red"}.get(r.passed) if r.skipped is None else "yellow"
        table.add_row(*_cells(r), style=style)
    common.console.print(table)
    for r in outcome.results:
        for note in [*r.notes, *r.failures]:
            common.console.print(f"  [dim]{r.case}:[/] {note}", highlight=False)


def command_line(argv: list[str]) -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(common.ROOT))
    except ValueError:
        exe_s = str(exe)
    return shlex.join([exe_s, "-m", "bench.run", *argv])


def markdown(outcomes: list[Outcome], argv: list[str], quick: bool, started: datetime) -> dict:
    """One block per benchmark (name -> markdown), each with its own run facts,
    so running one benchmark leaves the others' last figures in place."""
    m = common.machine()
    blocks = {}
    for o in outcomes:
        title = getattr(o.module, "TITLE", o.name)
        lines = [
            f"### {o.name}: {title}",
            "",
            f"- run: {started.strftime('%Y-%m-%d %H:%M UTC')}, "
            f"`{command_line(argv)}`"
            + (" (quick sizes)" if quick else "")
            + (f" (sizes x {common.SCALE:g})" if common.SCALE and not quick else ""),
            f"- machine: nproc {m['nproc']}, {m['CPU']}, {m['OS']}; "
            f"Python {m['Python']}, SQLite {m['SQLite']}",
        ]
        describe = getattr(o.module, "describe", None)
        if describe is not None:
            lines += [describe(quick)]
        lines += [
            "",
            "| " + " | ".join(HEADERS) + " |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in o.results:
            cells = [c.replace("|", "\\|") for c in _cells(r)]
            if r.passed is False:
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join(cells) + " |")
        notes = [(r.case, n) for r in o.results for n in [*r.notes, *r.failures]]
        if notes:
            lines.append("")
        lines += [f"- {case}: {note}" for case, note in notes]
        lines += ["", f"Benchmark wall time: {o.seconds:.0f} s.", ""]
        blocks[o.name] = "\n".join(lines)
    return blocks


def write_readme(blocks: dict) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    head, found, tail = text.partition(MARKER)
    if not found:
        head = text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n"
    kept: dict[str, str] = {}
    for part in ("\n" + tail).split("\n### ")[1:]:
        name = part.split(":", 1)[0].strip()
        kept[name] = "### " + part.rstrip("\n") + "\n"
    kept.update(blocks)
    order = [n for n in BENCHMARKS if n in kept] + [n for n in kept if n not in BENCHMARKS]
    section = [
        MARKER,
        "<!-- Below the marker, each benchmark's block is rewritten when it runs; "
        "edit above it. -->",
        "",
        "## Results",
        "",
    ]
    README.write_text(
        head + "\n".join(section) + "\n" + "\n".join(kept[n] for n in order).rstrip("\n") + "\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes (checks the harness)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile segflow's timed calls into bench/.results/; does not touch README.md",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="runs per case, the fastest counts (default: 3 with --quick, else 2)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        metavar="X",
        help="data sizes times X (benchmarks that size their data; the README says so)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    if args.scale is not None and not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    common.PROFILE = args.profile
    common.REPEAT = args.repeat
    common.SCALE = args.scale
    started = datetime.now(UTC)
    outcomes: list[Outcome] = []
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        common.console.rule(f"[bold]{name}[/]" + (" (quick)" if args.quick else ""))
        t0 = time.perf_counter()
        try:
            results = module.run(args.quick)
        except Exception as exc:  # record the crash, still run the others and write the file
            common.console.print_exception()
            crashed = Result(f"{name} crashed", 0)
            crashed.fail(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            results = [crashed]
        outcomes.append(Outcome(name, module, results, time.perf_counter() - t0))
        print_table(outcomes[-1])
    if args.profile or args.no_write:
        common.console.print("README.md not rewritten (--profile / --no-write)")
    else:
        write_readme(markdown(outcomes, argv, args.quick, started))
        common.console.print(f"results written to {README.relative_to(common.ROOT)}")
    failed = [r for o in outcomes for r in o.results if r.passed is False]
    if failed:
        common.console.print(f"[bold red]{len(failed)} case(s) failed:[/] ")
        for r in failed:
            common.console.print(f"  {r.case}: {'; '.join(r.failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
