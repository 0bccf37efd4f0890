"""Memory follows the batch: peak RSS of the scaler pipeline (fit and
transform, every row written) at two row-group sizes and three sizes of
data, on files `wasmpipe gen` writes. Run by `make bench`; replaces the
"Memory follows the batch" section of benches/RESULTS.md.

Each run is a fresh process with the default allocator settings; a second
figure runs it with `MIMALLOC_PURGE_DELAY=0` (freed memory returned to the
system at once), which shows what the process holds live rather than what
the allocator keeps for reuse. Single runs spread by about 15% (what the
allocator keeps depends on timing), so every figure is the median of
`RUNS` runs.
"""

import datetime
import os
import statistics
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from results_md import replace_section

ROOT = Path(__file__).resolve().parent.parent
WASMPIPE = ROOT / "target/release/wasmpipe"
SCALER = ROOT / "stages/scaler"
FEATURES = 10
RUNS = 3
CASES = [  # (rows, rows per row group)
    (10_000_000, 100_000),
    (10_000_000, 1_000_000),
    (1_000_000, 1_000_000),
    (int(os.environ.get("WASMPIPE_MEMORY_BENCH_MAX_ROWS", 30_000_000)), 1_000_000),
]


def peak_rss_mib(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `args`; return (wall seconds, peak RSS MiB) from wait4."""
    started = datetime.datetime.now()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = (datetime.datetime.now() - started).total_seconds()
    if status != 0:
        sys.exit(f"{' '.join(args)} failed ({status})")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wasmpipe-memory-"))
    lines = []
    try:
        for rows, group in CASES:
            data = work / f"x_{rows}_{group}.parquet"
            subprocess.run(
                [WASMPIPE, "gen", "regression", "--out", data, "--rows", str(rows), "--features", str(FEATURES),
                 "--row-group-rows", str(group)],
                check=True, stdout=subprocess.DEVNULL,
            )
            columns = ", ".join(f'"f{i}"' for i in range(FEATURES))
            manifest = work / "m.toml"
            manifest.write_text(
                f'version = 1\nname = "memory"\n[stage.scale]\ncomponent = "{SCALER}"\ninputs = ["{data}"]\n'
                f"config = {{ columns = [{columns}] }}\n"
            )
            figures = []
            for purge in (None, "0"):
                env = dict(os.environ)
                if purge is not None:
                    env["MIMALLOC_PURGE_DELAY"] = purge
                runs = []
                for _ in range(RUNS):
                    store = work / "store"
                    shutil.rmtree(store, ignore_errors=True)
                    runs.append(peak_rss_mib([str(WASMPIPE), "run", "-q", "--store", str(store), str(manifest)], env))
                figures.append((statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs)))
            data.unlink()
            (wall, rss), (_, live) = figures
            lines.append(f"{rows:>11,}  {group:>9,}  {wall:7.2f}  {rss:9.0f}  {live:9.0f}")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = (
        "## Memory follows the batch\n\n"
        "Written by `benches/memory.py` (`make bench`); each run replaces this section.\n\n"
        f"- date: {datetime.date.today()}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs\n"
        f"- the scaler pipeline (fit, then transform writing every row), {FEATURES} f64 columns, default settings "
        "(parallelism = cores, batch_rows 8192); peak RSS of the `wasmpipe run` process; `live` runs with "
        f"`MIMALLOC_PURGE_DELAY=0`; medians of {RUNS} runs\n\n"
        "```\n        rows  row group   wall s  RSS MiB  live MiB\n" + "\n".join(lines) + "\n```\n"
    )
    replace_section("Memory follows the batch", section)


if __name__ == "__main__":
    main()
