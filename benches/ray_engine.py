"""The Ray engine against the local engine, on this machine (`make bench`).

Two jobs on data from `wasmpipe gen` (20 features, binary target; row
groups are the partitions): the standard scaler (fit, then transform and
write every row) and logistic regression (fit passes, then batch
prediction). Each runs on the local engine with 1 and 2 threads, and on a
loopback Ray cluster (a head with no CPUs) with 1 and 2 worker nodes of one
CPU each, every run into a fresh store; medians of RUNS runs. Ray's overhead
per task is (Ray's wall - the local engine's wall at the same CPUs) / tasks.
Replaces the "Ray engine" section of benches/RESULTS.md.

    WASMPIPE_BENCH_RAY_ROWS (default 1000000), WASMPIPE_BENCH_RUNS (default 3)
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import replace_section

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WASMPIPE = REPO / "target" / "release" / "wasmpipe"
ROWS = int(os.environ.get("WASMPIPE_BENCH_RAY_ROWS", "1000000"))
RUNS = int(os.environ.get("WASMPIPE_BENCH_RUNS", "3"))
ROW_GROUP = max(ROWS // 20, 1000)


def manifests(work: Path, data: Path) -> dict[str, Path]:
    features = "[" + ", ".join(f'"f{i}"' for i in range(20)) + "]"
    head = f'version = 1\nname = "{{name}}"\n[defaults]\nbatch_rows = 65536\nrow_group_rows = {ROW_GROUP}\ntimeout_s = 3600\n'
    jobs = {
        "scaler": f'[stage.scale]\ncomponent = "{REPO}/stages/scaler"\ninputs = ["{data}"]\nconfig = {{ columns = {features} }}\n',
        "logreg": f'[stage.fit]\ncomponent = "{REPO}/stages/logreg"\ninputs = ["{data}"]\nconfig = {{ features = {features}, target = "target" }}\n',
    }
    out = {}
    for name, body in jobs.items():
        path = work / f"{name}.toml"
        path.write_text(head.replace("{name}", name) + body)
        out[name] = path
    return out


def tasks_of(stdout: str) -> int:
    total = 0
    for line in stdout.splitlines():
        m = re.match(r"^[│ ]*\s*(\w+)\s+(transformer|estimator|aggregator)\s+(\d+)", line.strip("│ "))
        if m:
            total += int(m.group(3))
    return total


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    p = subprocess.run([str(WASMPIPE), *args], capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    if p.returncode != 0:
        sys.exit(f"wasmpipe {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return wall, p.stdout


def median_run(args: list[str], env: dict[str, str], store: Path) -> tuple[float, str]:
    walls, out = [], ""
    for _ in range(RUNS):
        shutil.rmtree(store, ignore_errors=True)
        wall, out = timed([*args, "--store", str(store)], env)
        walls.append(wall)
    return statistics.median(walls), out


def main() -> None:
    env = dict(os.environ, WASMPIPE_PYTHON=sys.executable)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data.parquet"
        timed(["gen", "classification", "--features", "20", "--rows", str(ROWS), "--row-group-rows", str(ROW_GROUP), "--out", str(data)], env)
        jobs = manifests(work, data)
        local: dict[tuple[str, int], tuple[float, int]] = {}
        for name, manifest in jobs.items():
            for cpus in (1, 2):
                wall, out = median_run(["run", str(manifest), "-q", "-p", str(cpus)], env, work / "store")
                local[(name, cpus)] = (wall, tasks_of(out))
        for workers in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(workers):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            try:
                for name, manifest in jobs.items():
                    args = ["run", str(manifest), "-q", "--engine", "ray", "--ray-address", cluster.address]
                    wall, _ = median_run(args, env, work / "store")
                    base, tasks = local[(name, workers)]
                    results.append((name, workers, base, wall, tasks))
            finally:
                cluster.shutdown()
    lines = [
        f"{'job':<8} {'CPUs':>4} {'tasks':>6} {'local s':>8} {'ray s':>8} {'ray/local':>9} {'overhead ms/task':>17}",
    ]
    for name, cpus, base, wall, tasks in results:
        per_task = (wall - base) / max(tasks, 1) * 1000 * cpus
        lines.append(f"{name:<8} {cpus:>4} {tasks:>6} {base:>8.2f} {wall:>8.2f} {wall / base:>9.2f} {per_task:>17.1f}")
    table = "\n".join(lines)
    print(table)
    section = (
        "## Ray engine\n\nWritten by `benches/ray_engine.py` (`make bench`); each run replaces this section.\n\n"
        f"- date: {time.strftime('%Y-%m-%d')}\n- machine: {platform.machine()}, {os.cpu_count()} CPUs\n"
        f"- {ROWS} rows x 20 features in row groups of {ROW_GROUP} ({ROWS // ROW_GROUP} partitions); medians of {RUNS} runs,"
        " each into a fresh store; Ray: a loopback cluster, head without CPUs, worker nodes of one CPU; local: `-p` = CPUs\n"
        "- overhead per task = (Ray wall - local wall) / tasks x CPUs: the time a worker spends per task beyond the task itself\n\n"
        f"```\n{table}\n```\n"
    )
    replace_section("Ray engine", section)


if __name__ == "__main__":
    main()
