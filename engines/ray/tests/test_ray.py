"""The Ray engine end to end, on a loopback cluster (a head with no CPUs,
two worker nodes of one CPU each) with the store on moto's S3: its runs
equal local runs byte for byte, through lost nodes, killed and stopped
task processes and a killed driver. Every loop is bounded in count and
time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import Callable

from conftest import S3, assert_same, metrics, run_ok, snapshot, task_processes, wasmpipe
from ray.cluster_utils import Cluster


def local_run(s3: S3, manifest: str, store: str) -> tuple[dict[str, bytes], str]:
    out, _ = run_ok(s3, "run", manifest, "-q", "-p", "2", "--store", store)
    return snapshot(s3, store.split("/", 3)[3]), out


def ray_args(cluster: Cluster, manifest: str, store: str, *extra: str) -> list[str]:
    return ["run", manifest, "--engine", "ray", "--ray-address", cluster.address, "--store", store, *extra]


def watch(p: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Collect the driver's stderr lines as they come."""
    lines: list[str] = []

    def read() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return lines, t


def wait_for(what: str, condition: Callable[[], bool], p: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert p.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def finish(p: subprocess.Popen[str], lines: list[str], t: threading.Thread) -> str:
    # (stderr is the watcher's to read: communicate() would take lines from it.)
    assert p.stdout is not None
    out = p.stdout.read()
    p.wait(timeout=600)
    t.join(timeout=10)
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{''.join(lines)}"
    return out


def records(s3: S3, store: str) -> list[dict]:
    """The run records kept under `store`, newest first."""
    out, _ = run_ok(s3, "runs", "--json", "--store", store)
    return json.loads(out)


def stage_said(stage: dict) -> dict:
    """What a stage's record says that must not depend on the engine (the
    bytes read do: a local run's later passes read from its cache)."""
    said = {k: v for k, v in stage.items() if k not in ("seconds", "output", "committed_by", "tasks", "bytes_read")}
    return {**said, "tasks": len(stage["tasks"])}


def test_the_demos_on_ray_equal_local_runs(cluster: Cluster, s3: S3, prefix: str) -> None:
    for demo in ["diabetes", "breast_cancer"]:
        manifest = f"examples/{demo}/wasmpipe.toml"
        store = s3.url(f"{prefix}-{demo}")
        local_out, _ = run_ok(s3, "run", manifest, "-q", "-p", "2", "--store", store)
        [local_record] = records(s3, store)
        local = snapshot(s3, f"{prefix}-{demo}")
        out, err = run_ok(s3, *ray_args(cluster, manifest, store))
        assert "on Ray" in out, out
        assert metrics(out) == metrics(local_out), f"{demo}:\n{out}\n{err}"
        # The run record and report, as a local run keeps them.
        [record] = records(s3, store)
        assert (record["engine"], record["status"]) == ("ray", "succeeded"), record
        assert [s["name"] for s in record["stages"]] == [s["name"] for s in local_record["stages"]], record
        for ours, theirs in zip(record["stages"], local_record["stages"]):
            ours, theirs = stage_said(ours), stage_said(theirs)
            differ = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
            assert not differ, f"{demo}, stage {ours['name']}: (Ray, local) {differ}"
        assert all(t["started_ms"] >= 0 for s in record["stages"] for t in s["tasks"])
        assert any(line.startswith("run report: ") and record["run_id"] in line for line in err.splitlines()), err
        page = s3.client().get_object(Bucket=s3.bucket, Key=f"{prefix}-{demo}/_runs/{record['run_id']}/report.html")
        assert record["run_id"] in page["Body"].read().decode(), "the report names the run"
        assert_same(local, snapshot(s3, f"{prefix}-{demo}"), f"{demo} on Ray")


def test_a_worker_node_lost_mid_stage(cluster: Cluster, s3: S3, prefix: str) -> None:
    manifest = "examples/diabetes/wasmpipe.toml"
    store = s3.url(prefix)
    local, _ = local_run(s3, manifest, store)
    p = wasmpipe(s3, *ray_args(cluster, manifest, store))
    lines, t = watch(p)
    wait_for("the scale stage", lambda: any("[scale] fit pass 0" in line for line in lines), p)
    victim = cluster.list_all_nodes()[-1]
    cluster.remove_node(victim, allow_graceful=False)
    try:
        finish(p, lines, t)
    finally:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    assert_same(local, snapshot(s3, prefix), "a run that lost a node")


def test_a_task_process_killed_is_retried(cluster: Cluster, s3: S3, prefix: str) -> None:
    manifest = "examples/diabetes/wasmpipe.toml"
    store = s3.url(prefix)
    local, _ = local_run(s3, manifest, store)
    p = wasmpipe(s3, *ray_args(cluster, manifest, store))
    lines, t = watch(p)
    killed: list[int] = []

    def kill_one() -> bool:
        for pid in task_processes(store)[:1]:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return bool(killed)

    wait_for("a task process to kill", kill_one, p)
    finish(p, lines, t)
    assert any("retrying" in line for line in lines), "".join(lines)
    assert_same(local, snapshot(s3, prefix), "a run whose task was killed")


def test_a_stopped_task_is_backed_up_and_changes_nothing_when_it_resumes(
    cluster: Cluster, s3: S3, prefix: str
) -> None:
    manifest = "examples/diabetes/wasmpipe.toml"
    store = s3.url(prefix)
    local, _ = local_run(s3, manifest, store)
    straggler = {"WASMPIPE_RAY_STRAGGLER_FACTOR": "2", "WASMPIPE_RAY_STRAGGLER_FLOOR": "1"}
    p = wasmpipe(s3, *ray_args(cluster, manifest, store), env=straggler)
    lines, t = watch(p)
    # Stop a task of a stage with seven partitions, once others of its
    # round have finished.
    wait_for("the clean stage", lambda: any("[clean[" in line for line in lines), p)
    stopped: list[int] = []

    def stop_one() -> bool:
        for pid in task_processes(store)[:1]:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        return bool(stopped)

    wait_for("a task process to stop", stop_one, p)
    try:
        finish(p, lines, t)
        assert any("backed up" in line for line in lines), "".join(lines)
        committed = snapshot(s3, prefix, empty=False)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    # The stopped attempt, resumed, finishes (or was killed with its worker);
    # either way it changes nothing.
    deadline = time.monotonic() + 60
    while any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z" for pid in stopped):
        assert time.monotonic() < deadline, "the resumed attempt did not end within 60 s"
        time.sleep(0.1)
    assert_same(committed, snapshot(s3, prefix, empty=False), "the stopped attempt, resumed")
    assert_same(local, snapshot(s3, prefix), "a run with a stopped task")


def test_a_deterministic_failure_is_tried_once(cluster: Cluster, s3: S3, prefix: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import REPO

    hostile = REPO / "stages" / "target" / "wasm32-wasip2" / "release" / "hostile.wasm"
    if not hostile.is_file():
        hostile = next((REPO / "stages" / "target").glob("**/release/hostile*.wasm"))
    manifest = tmp_path / "wasmpipe.toml"
    manifest.write_text(
        'version = 1\nname = "hostile"\n[stage.h]\n'
        f'component = "{hostile}"\ninputs = ["{REPO}/examples/diabetes/diabetes.csv"]\n'
        'config = { mode = "fail" }\n'
    )
    p = wasmpipe(s3, *ray_args(cluster, str(manifest), s3.url(prefix)))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 65, f"{out}\n{err}"
    assert "failed on purpose" in err and "1 attempt" in err and "deterministic" in err, err
    # The failed run is recorded: its stage failed, and why.
    [record] = records(s3, s3.url(prefix))
    assert (record["engine"], record["status"]) == ("ray", "failed"), record
    assert "failed on purpose" in record["error"], record
    assert [(s["name"], s["status"]) for s in record["stages"]] == [("h", "failed")], record


def test_a_driver_killed_mid_run_resumes_where_it_stopped(cluster: Cluster, s3: S3, prefix: str) -> None:
    manifest = "examples/diabetes/wasmpipe.toml"
    store = s3.url(prefix)
    local, _ = local_run(s3, manifest, store)
    p = wasmpipe(s3, *ray_args(cluster, manifest, store))
    lines, t = watch(p)
    wait_for("the fit stage", lambda: any("[fit] fit pass 0" in line for line in lines), p)
    p.kill()
    p.wait(timeout=60)
    t.join(timeout=10)
    out, _ = run_ok(s3, *ray_args(cluster, manifest, store))
    # The stages the killed driver committed are not run again.
    committed = [line.split()[0] for line in out.splitlines() if " committed " in f" {line} "]
    assert {"ingest", "validate", "clean", "scale"} <= set(committed), out
    assert_same(local, snapshot(s3, prefix), "a resumed run")


def test_a_local_store_with_a_remote_cluster_is_refused(s3: S3) -> None:
    p = wasmpipe(s3, "run", "examples/diabetes/wasmpipe.toml", "--engine", "ray", "--ray-address", "10.1.2.3:6379", "--store", "/tmp/x")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 65, f"{out}\n{err}"
    assert "--store-is-shared" in err, err
