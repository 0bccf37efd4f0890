"""wasmpipe against its peers on the same jobs, the same data and two
threads each, in one run: the standard scaler (fit, transform, write) in
wasmpipe, DuckDB, Polars and pyarrow; least squares (fit, predict, write)
in wasmpipe, DuckDB and numpy, and the same fit alone (`emit_rows =
false`; the coefficients); logistic regression (fit, predict, write)
in wasmpipe and scikit-learn. Runs alternate tool by tool; each writes
zstd Parquet into a fresh place; the outputs are checked equal (to 1e-9
relative for the scaler and least squares, the same predicted classes
but for rows within 1e-4 of the boundary for logistic regression) after
the timed runs. Reports median wall and CPU seconds and peak RSS (of the
tool's process, from wait4), `ratio <job> wasmpipe/<peer> = X` lines
(wall time) and `ratio <job> cpu wasmpipe/<peer> = X` lines (CPU time).

    .tools/venv/bin/python benches/peers.py   # make bench runs it

WASMPIPE_BENCH_PEER_ROWS sets the rows (default 2,000,000; the scaler and
least squares read 10 features, logistic regression 20).
Replaces the "Peers" section of benches/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import replace_section

REPO = Path(__file__).resolve().parent.parent
WASMPIPE = REPO / "target" / "release" / "wasmpipe"
ROWS = int(os.environ.get("WASMPIPE_BENCH_PEER_ROWS", "2000000"))
RUNS = 5
THREADS = 2
ENV = {
    **os.environ,
    "POLARS_MAX_THREADS": str(THREADS),
    "OMP_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "RAYON_NUM_THREADS": str(THREADS),
}

# Each peer is a Python program run as its own process: argv[1] is the
# input, argv[2] where to write.
SCALER = {
    "duckdb": """
import sys, duckdb
con = duckdb.connect(config={"threads": 2})
src = sys.argv[1]
names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{src}'").fetchall()]
cols = [c for c in names if c.startswith("f")][:10]
stats = ", ".join(f"avg({c}) AS m_{c}, stddev_pop({c}) AS s_{c}" for c in cols)
scaled = ", ".join(f"({c} - m_{c}) / s_{c} AS {c}" if c in cols else c for c in names)
con.execute(f"COPY (SELECT {scaled} FROM '{src}', (SELECT {stats} FROM '{src}')) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)")
""",
    "polars": """
import sys, polars as pl
lf = pl.scan_parquet(sys.argv[1])
cols = [c for c in lf.collect_schema().names() if c.startswith("f")][:10]
lf.with_columns([((pl.col(c) - pl.col(c).mean()) / pl.col(c).std(ddof=0)).alias(c) for c in cols]) \\
  .sink_parquet(sys.argv[2], compression="zstd", compression_level=1)
""",
    "pyarrow": """
import sys, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
cols = [c for c in f.schema_arrow.names if c.startswith("f")][:10]
n = 0; s = {c: 0.0 for c in cols}; ss = {c: 0.0 for c in cols}
for b in f.iter_batches(batch_size=65536, columns=cols):
    n += b.num_rows
    for c in cols:
        s[c] += pc.sum(b[c]).as_py(); ss[c] += pc.sum(pc.multiply(b[c], b[c])).as_py()
mean = {c: s[c] / n for c in cols}
std = {c: (ss[c] / n - mean[c] ** 2) ** 0.5 for c in cols}
w = None
for b in f.iter_batches(batch_size=65536):
    out = pa.record_batch([pc.divide(pc.subtract(b[c], mean[c]), std[c]) if c in cols else b[c] for c in b.schema.names], names=b.schema.names)
    w = w or pq.ParquetWriter(sys.argv[2], out.schema, compression="zstd", compression_level=1)
    w.write_batch(out)
w.close()
""",
}

# Least squares in DuckDB: X^T X and X^T y as SQL sums over the file, then
# the 11 x 11 solve in numpy (`beta`: intercept first); the peers go on
# from there.
DUCKDB_NORMAL_EQUATIONS = """
import sys, json, duckdb, numpy as np
con = duckdb.connect(config={"threads": 2})
src = sys.argv[1]
cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{src}'").fetchall() if r[0].startswith("f")][:10]
x = ["1.0"] + cols
terms = [f"sum({a} * {b})" for i, a in enumerate(x) for b in x[i:]] + [f"sum({a} * target)" for a in x]
row = con.execute(f"SELECT {', '.join(terms)} FROM '{src}'").fetchone()
k = len(x); xtx = np.zeros((k, k)); it = iter(row)
for i in range(k):
    for j in range(i, k):
        xtx[i, j] = xtx[j, i] = next(it)
beta = np.linalg.solve(xtx, np.array([next(it) for _ in range(k)]))
"""

LSTSQ = {
    "duckdb": DUCKDB_NORMAL_EQUATIONS
    + """
pred = " + ".join([repr(float(beta[0]))] + [f"{float(beta[j + 1])!r} * {c}" for j, c in enumerate(cols)])
con.execute(f"COPY (SELECT *, {pred} AS prediction FROM '{src}') TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)")
""",
    "numpy": """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
cols = [c for c in t.column_names if c.startswith("f")][:10]
X = np.column_stack([np.ones(t.num_rows)] + [t[c].to_numpy() for c in cols])
beta, *_ = np.linalg.lstsq(X, t["target"].to_numpy(), rcond=None)
pq.write_table(t.append_column("prediction", pa.array(X @ beta)), sys.argv[2], compression="zstd", compression_level=1)
""",
}

# Fitting only: the coefficients, as JSON [intercept, w_1 ..].
LSTSQ_FIT = {
    "duckdb": DUCKDB_NORMAL_EQUATIONS
    + """
open(sys.argv[2], "w").write(json.dumps([float(b) for b in beta]))
""",
    "numpy": """
import sys, json, numpy as np, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
cols = [c for c in t.column_names if c.startswith("f")][:10]
X = np.column_stack([np.ones(t.num_rows)] + [t[c].to_numpy() for c in cols])
beta, *_ = np.linalg.lstsq(X, t["target"].to_numpy(), rcond=None)
open(sys.argv[2], "w").write(json.dumps([float(b) for b in beta]))
""",
}

LOGREG = {
    "sklearn": """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
t = pq.read_table(sys.argv[1])
cols = [c for c in t.column_names if c.startswith("f")]
X = np.column_stack([t[c].to_numpy() for c in cols]); y = t["target"].to_numpy()
m = LogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(X, y)
p = m.predict_proba(X)
out = t.append_column("prediction", pa.array(m.classes_[p.argmax(axis=1)]))
out = out.append_column("proba_0", pa.array(p[:, 0])).append_column("proba_1", pa.array(p[:, 1]))
pq.write_table(out, sys.argv[2], compression="zstd", compression_level=1)
""",
}


def run(args: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds and peak RSS (bytes) of one process."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{args} failed:\n{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def manifest(work: Path, name: str, data: Path, stage: str, config: str, extra: str = "") -> Path:
    path = work / f"{name}.toml"
    path.write_text(
        f'version = 1\nname = "peers"\n[defaults]\nbatch_rows = 65536\nrow_group_rows = 500000\n'
        f'memory_mib = 512\ntimeout_s = 3600\n[stage.{name}]\ncomponent = "{REPO / "stages" / stage}"\n'
        f'inputs = ["{data}"]\n{extra}[stage.{name}.config]\n{config}\n'
    )
    return path


def wasmpipe_output(store: Path, name: str):
    import pyarrow.parquet as pq
    import pyarrow as pa

    out = store / "peers" / name
    commit = json.loads((out / "_wasmpipe_commit.json").read_text())
    return pa.concat_tables(pq.read_table(out / p["name"]) for p in commit["parts"])


def check_equal(job: str, ours, theirs, columns: list[str], tol: float) -> None:
    import numpy as np

    for c in columns:
        a, b = ours[c].to_numpy(), theirs[c].to_numpy()
        scale = max(float(np.max(np.abs(b))), 1.0)
        worst = float(np.max(np.abs(a - b))) / scale
        if not worst <= tol:
            sys.exit(f"{job}: column {c} differs by {worst:.3g} (relative) from the peer's")


def bench(work: Path, job: str, data: Path, ours: Path, peers: dict[str, str], suffix: str = ".parquet") -> list[dict]:
    """Alternate wasmpipe and each peer RUNS times; medians."""
    tools = ["wasmpipe", *peers]
    samples: dict[str, list[tuple[float, float, int]]] = {t: [] for t in tools}
    for r in range(RUNS + 1):  # the first round warms the caches and is not counted
        for tool in tools:
            out = work / f"{job}-{tool}-{r}"
            if tool == "wasmpipe":
                args = [str(WASMPIPE), "run", "-q", "-p", str(THREADS), "--store", str(out), str(ours)]
            else:
                script = work / f"{job}-{tool}.py"
                script.write_text(peers[tool])
                args = [sys.executable, str(script), str(data), str(out) + suffix]
            sample = run(args)
            if r > 0:
                samples[tool].append(sample)
            # Only round 1's outputs are checked: the others go at once, so
            # that the page cache does not fill with outputs being written
            # back while later runs allocate (on this VM that drifted every
            # tool's system time upwards through the bench).
            if r != 1:
                if tool == "wasmpipe":
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    Path(str(out) + suffix).unlink(missing_ok=True)
    rows = []
    for tool in tools:
        wall, cpu, rss = (statistics.median(s[i] for s in samples[tool]) for i in range(3))
        rows.append({"job": job, "tool": tool, "wall": wall, "cpu": cpu, "rss": rss})
    return rows


def main() -> None:
    if not WASMPIPE.is_file():
        sys.exit("build the CLI first (make bench does)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reg = work / "regression.parquet"
        cls = work / "classification.parquet"
        for kind, path, features in [("regression", reg, 10), ("classification", cls, 20)]:
            subprocess.run(
                [str(WASMPIPE), "gen", kind, "--features", str(features), "--row-group-rows", "500000",
                 "--rows", str(ROWS), "--out", str(path)],
                check=True, stdout=subprocess.DEVNULL,
            )
        ten = [f"f{j}" for j in range(10)]
        features10 = json.dumps(ten)
        features20 = json.dumps([f"f{j}" for j in range(20)])

        def check_scaler(w: Path) -> None:
            import pyarrow.parquet as pq

            ours = wasmpipe_output(w / "scaler-wasmpipe-1", "scaler")
            for peer in SCALER:
                theirs = pq.read_table(w / f"scaler-{peer}-1.parquet")
                if theirs.column_names != ours.column_names:
                    sys.exit(f"scaler: {peer} wrote columns {theirs.column_names}, wasmpipe {ours.column_names}")
                check_equal("scaler", ours, theirs, ours.column_names, 1e-9)

        def check_lstsq(w: Path) -> None:
            import pyarrow.parquet as pq

            ours = wasmpipe_output(w / "lstsq-wasmpipe-1", "lstsq")
            for peer in LSTSQ:
                check_equal("lstsq", ours, pq.read_table(w / f"lstsq-{peer}-1.parquet"), ["prediction"], 1e-9)

        def check_lstsq_fit(w: Path) -> None:
            out = w / "lstsq_fit-wasmpipe-1" / "peers" / "lstsq_fit"
            commit = json.loads((out / "_wasmpipe_commit.json").read_text())
            if commit["parts"]:
                sys.exit("lstsq_fit: a fit-only stage wrote rows")
            model = json.loads((out / commit["model"]["name"]).read_text())
            ours = [model["intercept"], *model["coefficients"]]
            for peer in LSTSQ_FIT:
                theirs = json.loads((w / f"lstsq_fit-{peer}-1.json").read_text())
                worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs))
                if not worst <= 1e-8:
                    sys.exit(f"lstsq_fit: coefficients differ from {peer}'s by {worst:.3g} (relative)")

        def check_logreg(w: Path) -> None:
            import numpy as np
            import pyarrow.parquet as pq

            ours = wasmpipe_output(w / "logreg-wasmpipe-1", "logreg")
            theirs = pq.read_table(w / "logreg-sklearn-1.parquet")
            p = theirs["proba_1"].to_numpy()
            differ = ours["prediction"].to_numpy() != theirs["prediction"].to_numpy()
            # Both fit to a tolerance, so a row within 1e-4 of the boundary
            # may fall either side.
            away = differ & (np.abs(p - 0.5) > 1e-4)
            if np.any(away):
                sys.exit(f"logreg: {int(np.sum(away))} predictions differ from scikit-learn's away from the boundary, e.g. p = {p[away][:3]}")

        # Timed first, checked after: the checks load the outputs, and a
        # child started from a grown parent would report its peak RSS.
        results += bench(work, "scaler", reg, manifest(work, "scaler", reg, "scaler", f"columns = {features10}"), SCALER)
        results += bench(
            work, "lstsq", reg, manifest(work, "lstsq", reg, "linreg", f'features = {features10}\ntarget = "target"'), LSTSQ
        )
        results += bench(
            work,
            "lstsq_fit",
            reg,
            manifest(
                work, "lstsq_fit", reg, "linreg", f'features = {features10}\ntarget = "target"', "emit_rows = false\n"
            ),
            LSTSQ_FIT,
            ".json",
        )
        results += bench(
            work,
            "logreg",
            cls,
            manifest(work, "logreg", cls, "logreg", f'features = {features20}\ntarget = "target"\ntol = 1e-8'),
            LOGREG,
        )
        check_scaler(work)
        check_lstsq(work)
        check_lstsq_fit(work)
        check_logreg(work)

    lines = [f"{'job':<10} {'tool':<9} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9}"]
    for r in results:
        lines.append(f"{r['job']:<10} {r['tool']:<9} {r['wall']:>7.2f} {r['cpu']:>7.2f} {r['rss'] / 2**20:>9.0f}")
    ratios = []
    for job in dict.fromkeys(r["job"] for r in results):
        ours = next(r for r in results if r["job"] == job and r["tool"] == "wasmpipe")
        for peer in (r for r in results if r["job"] == job and r["tool"] != "wasmpipe"):
            ratios.append(f"ratio {job} wasmpipe/{peer['tool']} = {ours['wall'] / peer['wall']:.2f}")
        for peer in (r for r in results if r["job"] == job and r["tool"] != "wasmpipe"):
            ratios.append(f"ratio {job} cpu wasmpipe/{peer['tool']} = {ours['cpu'] / peer['cpu']:.2f}")
    print("\n".join(lines + [""] + ratios))
    section = (
        "## Peers\n\nWritten by `benches/peers.py` (`make bench`); each run replaces this section.\n\n"
        f"- date: {time.strftime('%Y-%m-%d')}\n- machine: {platform.machine()}, {os.cpu_count()} CPUs\n"
        f"- {ROWS} rows (scaler, least squares: 10 f64 features; logistic regression: 20), row groups of 500k;"
        f" {THREADS} threads for every tool; zstd level 1 output; medians of {RUNS} alternating runs after a warm-up;"
        " outputs checked equal; peak RSS of the tool's process\n"
        "- every job reads the Parquet, fits, and writes every row with its result"
        " (scaler: every column, the features scaled; least squares and logistic regression: the input and the prediction),"
        " but lstsq_fit, which fits only (wasmpipe: `emit_rows = false`) and gives the coefficients\n\n"
        f"```\n" + "\n".join(lines) + "\n```\n\n```\n" + "\n".join(ratios) + "\n```\n"
    )
    replace_section("Peers", section)


if __name__ == "__main__":
    main()
