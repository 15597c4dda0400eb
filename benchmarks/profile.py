"""Where a drain's worker CPU goes: a py-spy sampling profile of one iron drain, summed by
layer and by function.

    python -m benchmarks.profile [--concurrency 10] [--total 20000] [--dsn ADMIN_DSN]

Needs the ``bench`` extra (py-spy) and permission to trace a child process (root, or
``kernel.yama.ptrace_scope`` 0). Uses its own database, iron_defer_bench_profile. Prints the
summary and writes it to docs/benchmarks/profile-c<concurrency>.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import run

#: A sample belongs to the layer of the innermost frame that falls in one (frames of the
#: standard library or the interpreter count for the library that called them).
LAYERS = (
    ("iron_defer_trio (engine, store)", ("iron_defer_trio/",)),
    ("OpenTelemetry metrics", ("opentelemetry/",)),
    ("structlog (logging)", ("structlog/",)),
    ("asyncpg (driver, protocol)", ("asyncpg/",)),
    ("trio-asyncio (bridge loop)", ("trio_asyncio/", "asyncio/")),
    ("pydantic (models)", ("pydantic/", "pydantic_core/")),
    ("trio (scheduler, I/O)", ("trio/",)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("IRON_DEFER_BENCH_ADMIN_DSN", run.DEFAULT_ADMIN)
    )
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=run.OUT)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")

    dsn = run.fresh(args.dsn, "iron_defer_bench_profile")
    run.reset(dsn)
    run.sql(dsn, run.FILL_IRON, args.total, "pending")
    run.sql(dsn, "VACUUM ANALYZE iron_defer.tasks")
    run.checkpoint(dsn)
    with tempfile.TemporaryDirectory() as scratch:
        stacks = Path(scratch) / "stacks.txt"
        command = [
            spy, "record", "--format", "raw", "--rate", "500", "--nonblocking", "--full-filenames",
            "--output", str(stacks), "--",
            sys.executable, "-m", "benchmarks.worker", "iron", "drain", dsn,
            "--total", str(args.total), "--concurrency", str(args.concurrency),
        ]  # fmt: skip
        subprocess.run(
            command,
            cwd=run.ROOT,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(run.ROOT)},
        )
        summary = summarise(stacks.read_text(), args.concurrency, args.total)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-c{args.concurrency}.txt").write_text(summary + "\n")


def summarise(collapsed: str, concurrency: int, total: int) -> str:
    """Shares of the samples by layer and the functions with the most self time, from
    py-spy's collapsed stacks (``frame;frame;... count`` per line)."""
    by_layer: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    samples = start_up = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if "trio/_core/_run.py" not in stack:
            start_up += count  # imports and set-up before trio.run: not the drain
            continue
        frames = stack.split(";")
        samples += count
        by_layer[_layer(frames)] += count
        by_leaf[_short(frames[-1])] += count
    if not samples:
        return "no samples (could py-spy trace the worker?)"
    lines = [
        f"py-spy profile of one iron drain: {total:,} no-op tasks at concurrency {concurrency}, "
        f"{samples:,} samples of the worker's main thread inside trio.run ({start_up:,} "
        "samples of process start-up left out)",
        "",
        "share  layer (innermost library frame of the sample; stdlib counts for its caller)",
    ]
    lines += [f"{n / samples:6.1%}  {layer}" for layer, n in by_layer.most_common()]
    lines += ["", "share  function with the most self time"]
    lines += [f"{n / samples:6.1%}  {leaf}" for leaf, n in by_leaf.most_common(25)]
    return "\n".join(lines)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for layer, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return layer
    return "other (interpreter, standard library)"


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    package = next((p for p in reversed(parts[:-1]) if p not in {"_impl", "sdk", "_internal"}), "")
    return f"{name} ({package}/{parts[-1]})" if package else f"{name} ({parts[-1]})"


if __name__ == "__main__":
    main()
