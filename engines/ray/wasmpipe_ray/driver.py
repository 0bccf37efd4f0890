"""The Ray driver: runs a wasmpipe plan as rounds of Ray tasks.

Each stage is prepared (`wasmpipe prepare`), its rounds run (fit tasks,
the merge tree's combine tasks, the merge, pass after pass; then the
transform tasks), each task a `wasmpipe task` process on a Ray worker, and
the stage is committed (`wasmpipe commit`). What is retried, and why a
duplicate attempt does no harm, is in docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from .contract import EXIT_DETERMINISTIC, EXIT_OK, EXIT_TRANSIENT, ContractError, StageTasks, Wasmpipe, failure

#: Attempts of a task that fails transiently (exit 75) before the stage fails.
MAX_ATTEMPTS = 4
#: Attempts Ray makes on its own when a worker or node dies under a task.
RAY_MAX_RETRIES = 3
#: How often a long round reports its progress (seconds).
PROGRESS_EVERY_S = 5.0
#: Most warnings a run record keeps (as a local run's).
MAX_WARNINGS = 200


class StageFailed(Exception):
    """A stage failed: which task, after how many attempts, and why."""

    def __init__(self, stage: str, task: str, attempts: int, code: int, message: str) -> None:
        kind = {EXIT_DETERMINISTIC: "deterministic", EXIT_TRANSIENT: "transient"}.get(code, "internal")
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f'stage "{stage}", task {task} failed ({kind}, exit {code}, {tries}): {message}')
        self.stage = stage
        self.task = task
        self.attempts = attempts
        self.code = code


def _die_with_parent() -> None:
    """In the task process: die when the Ray worker that started it dies
    (a cancelled attempt, a lost worker), instead of running on unseen."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)
def run_task(binary: str, args: list[str]) -> dict[str, Any]:
    """One `wasmpipe task` on this node: its outcome, or its exit code and
    message (a failure is a value here, so that the driver decides what to
    retry; a worker or node lost under it is Ray's to retry)."""
    if not os.path.isfile(binary):
        return {"exit_code": 70, "error": f"no wasmpipe binary at {binary} on this node", "logs": ""}
    started = time.time()
    proc = subprocess.run(
        [binary, "task", *args], capture_output=True, text=True, check=False, preexec_fn=_die_with_parent
    )
    if proc.returncode == EXIT_OK:
        return {"outcome": json.loads(proc.stdout.strip().splitlines()[-1]), "logs": proc.stderr, "started": started}
    code = proc.returncode if proc.returncode > 0 else EXIT_TRANSIENT  # a signal: the process was lost
    message = failure(proc.stdout, proc.returncode)
    if proc.returncode < 0:
        message = f"the task process was ended by signal {-proc.returncode}"
    return {"exit_code": code, "error": message, "logs": proc.stderr, "started": started}


@dataclass
class Attempt:
    key: tuple[str, int]
    number: int
    submitted: float
    backup: bool = False


@dataclass
class RoundStats:
    done: int = 0
    resumed: int = 0
    retried: int = 0
    backups: int = 0


@dataclass
class StageSummary:
    name: str
    kind: str
    tasks: int = 0
    resumed: int = 0
    retried: int = 0
    backups: int = 0
    passes: int = 0
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    committed_before: bool = False
    output: str = ""
    report: Any = None
    result: Any = None


@dataclass
class Driver:
    """Runs one plan on the connected Ray cluster."""

    wasmpipe: Wasmpipe
    plan_url: str
    plan: dict[str, Any]
    run_id: str = field(default_factory=lambda: f"{int(time.time())}-{uuid.uuid4().hex[:8]}")
    #: A task slower than this many times the median of its round's finished
    #: tasks gets a backup attempt ...
    straggler_factor: float = 3.0
    #: ... once it has run at least this long (seconds).
    straggler_floor_s: float = 5.0
    capacity: int = 1
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    #: When the run started, milliseconds since the Unix epoch.
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: The stages committed so far, with their tasks' outcomes (the run log).
    committed: list[dict[str, Any]] = field(default_factory=list)
    #: The outcomes of the stage running now, round by round.
    running: list[dict[str, Any]] = field(default_factory=list)
    #: Warnings and errors the tasks logged.
    warnings: list[dict[str, str]] = field(default_factory=list)

    def run(self) -> list[StageSummary]:
        """Run every stage in order; the run's record and report are kept in
        the store however it ends."""
        summaries = []
        error = None
        try:
            for stage in self.plan["stages"]:
                summaries.append(self.run_stage(stage["name"]))
        except BaseException as e:
            error = str(e) or type(e).__name__
            raise
        finally:
            self.keep_record(error)
        return summaries

    def keep_record(self, error: str | None) -> None:
        """`wasmpipe record`: the run record and HTML report, as a local run
        writes them. A store that cannot take them does not fail a run
        that did its work."""
        log = {
            "run_id": self.run_id,
            "engine": "ray",
            "started_ms": self.started_ms,
            "stages": self.committed,
            "running": self.running,
            "warnings": self.warnings,
            "error": error,
        }
        try:
            kept = self.wasmpipe.record(self.plan_url, log)
        except ContractError as e:
            self.log(f"the run record was not written: {e.message}")
            return
        except Exception as e:  # noqa: BLE001 (the run's own outcome stands)
            self.log(f"the run record was not written: {type(e).__name__}: {e}")
            return
        self.log(f"run record: {kept.get('record')}")
        if kept.get("report"):
            self.log(f"run report: {kept['report']}")

    def run_stage(self, name: str) -> StageSummary:
        started = time.monotonic()
        self.running = []
        tasks = self.wasmpipe.prepare(self.plan_url, name)
        summary = StageSummary(name=name, kind=tasks.kind, output=tasks.output)
        if not tasks.committed:
            outcomes = self.rounds(tasks, summary)
            summary.tasks = len(outcomes)
            summary.resumed = sum(1 for o in outcomes if o["resumed"])
            summary.bytes_read = sum(o["bytes_read"] for o in outcomes)
            summary.bytes_written = sum(o["bytes_written"] for o in outcomes)
            summary.rows_in = sum(o["rows_in"] for o in outcomes if o["task"].startswith("transform:"))
        # (A stage an identical run committed: `commit` reports that commit.)
        committed = self.wasmpipe.commit(self.plan_url, name, self.run_id)
        summary.committed_before = bool(committed.get("committed_before"))
        summary.rows_out = committed["rows"]
        summary.quarantined = committed["quarantined"]
        summary.passes = max(summary.passes, committed["passes"])
        # A stage without transform tasks (an aggregator, a fit-only
        # estimator) reports the rows its fit read.
        if tasks.transform_tasks == 0 and not summary.committed_before:
            summary.rows_in = committed["rows_in"]
        summary.report = committed.get("report")
        summary.result = committed.get("result")
        summary.seconds = time.monotonic() - started
        self.committed.append({"name": name, "seconds": summary.seconds, "outcomes": self.running})
        self.running = []
        return summary

    def rounds(self, tasks: StageTasks, summary: StageSummary) -> list[dict[str, Any]]:
        outcomes: list[dict[str, Any]] = []
        if tasks.fit_tasks:
            for p in range(tasks.max_passes):
                outcomes += self.round(tasks, summary, f"fit pass {p}", [(f"fit:{i}", p) for i in range(tasks.fit_tasks)])
                for level, groups in enumerate(tasks.combine_levels, start=1):
                    work = [(f"combine:{level}:{g}", p) for g in range(groups)]
                    outcomes += self.round(tasks, summary, f"combine level {level} of pass {p}", work)
                merged = self.round(tasks, summary, f"merge of pass {p}", [("merge", p)])
                outcomes += merged
                summary.passes = p + 1
                if (merged[0].get("fit") or {}).get("step") == "done":
                    break
        if tasks.transform_tasks:
            work = [(f"transform:{i}", 0) for i in range(tasks.transform_tasks)]
            outcomes += self.round(tasks, summary, "transform", work)
        return outcomes

    def task_args(self, stage: str, task: str, pass_: int, attempt: int) -> list[str]:
        return [
            "--plan", self.plan_url,
            "--plan-sha256", self.plan_url.rsplit("/", 1)[-1].removesuffix(".json"),
            "--stage", stage, "--task", task, "--pass", str(pass_),
            "--attempt", str(attempt), "--store", self.wasmpipe.store, "--log-format", "json",
        ]  # fmt: skip

    def round(
        self, tasks: StageTasks, summary: StageSummary, what: str, work: list[tuple[str, int]]
    ) -> list[dict[str, Any]]:
        """Run one round: `capacity` tasks at a time (the stage's
        parallelism, when lower), transient failures retried with backoff,
        stragglers backed up; the outcomes in order."""
        stage = tasks.stage
        window = min(self.capacity, tasks.parallelism or self.capacity)
        # (task, attempt number, not before): retries wait out their backoff here.
        pending: deque[tuple[tuple[str, int], int, float]] = deque((key, 1, 0.0) for key in work)
        running: dict[ray.ObjectRef, Attempt] = {}
        results: dict[tuple[str, int], dict[str, Any]] = {}
        attempts: dict[tuple[str, int], int] = {}
        backed_up: set[tuple[str, int]] = set()
        durations: list[float] = []
        stats = RoundStats()
        started = time.monotonic()
        progress_at = started + PROGRESS_EVERY_S

        def submit(key: tuple[str, int], number: int, backup: bool = False) -> None:
            attempts[key] = attempts.get(key, 0) + 1
            ref = run_task.remote(self.wasmpipe.binary, self.task_args(stage, key[0], key[1], attempts[key]))
            running[ref] = Attempt(key, number, time.monotonic(), backup)

        while pending or running:
            now = time.monotonic()
            for _ in range(len(pending)):
                if sum(1 for a in running.values() if not a.backup) >= window:
                    break
                key, number, not_before = pending.popleft()
                if not_before > now:
                    pending.append((key, number, not_before))
                elif key not in results:
                    submit(key, number)
            if not running:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
            for ref in ready:
                attempt = running.pop(ref)
                if attempt.key in results:
                    continue  # the other attempt of this task won
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as e:  # lost beyond Ray's own retries
                    answer = {"exit_code": EXIT_TRANSIENT, "error": f"lost: {e}", "logs": ""}
                self.forward_logs(answer.get("logs", ""))
                if "outcome" in answer:
                    results[attempt.key] = answer["outcome"]
                    durations.append(time.monotonic() - attempt.submitted)
                    stats.done += 1
                    stats.resumed += answer["outcome"]["resumed"]
                    for other, a in list(running.items()):
                        if a.key == attempt.key:
                            ray.cancel(other, force=True)
                    continue
                code, message = answer["exit_code"], answer["error"]
                if code == EXIT_TRANSIENT and any(a.key == attempt.key for a in running.values()):
                    continue  # its other attempt may still finish
                # A deterministic (or internal) failure fails the stage at
                # once, whatever another attempt of the task is doing.
                if code == EXIT_TRANSIENT and attempt.number < MAX_ATTEMPTS:
                    stats.retried += 1
                    self.log(f"[{stage}] {attempt.key[0]}: {message}; retrying (attempt {attempt.number + 1})")
                    backoff = min(0.2 * 2**attempt.number, 5.0)
                    pending.appendleft((attempt.key, attempt.number + 1, time.monotonic() + backoff))
                    continue
                for other in running:
                    ray.cancel(other, force=True)
                self.running += [results[key] for key in work if key in results]
                raise StageFailed(stage, attempt.key[0], attempts[attempt.key], code, message)
            if time.monotonic() >= progress_at:
                progress_at = time.monotonic() + PROGRESS_EVERY_S
                self.log(
                    f"[{stage}] {what}: {stats.done}/{len(work)} done, {len(running)} running"
                    + (f", {stats.retried} retried" if stats.retried else "")
                    + (f", {stats.backups} backed up" if stats.backups else "")
                )
            # Stragglers: once a few tasks finished, back up any task far
            # slower than the median (once per task).
            if len(durations) >= 2 and not pending:
                slow = max(self.straggler_factor * statistics.median(durations), self.straggler_floor_s)
                now = time.monotonic()
                for a in list(running.values()):
                    if not a.backup and a.key not in backed_up and now - a.submitted > slow:
                        backed_up.add(a.key)
                        stats.backups += 1
                        self.log(f"[{stage}] {a.key[0]}: running {now - a.submitted:.1f}s, over {slow:.1f}s; starting a backup")
                        submit(a.key, a.number, backup=True)
        for a in list(running):
            ray.cancel(a, force=True)
        summary.retried += stats.retried
        summary.backups += stats.backups
        self.log(
            f"[{stage}] {what}: {len(work)} tasks done"
            + (f" ({stats.resumed} resumed)" if stats.resumed else "")
            + (f", {stats.retried} retried" if stats.retried else "")
            + (f", {stats.backups} backed up" if stats.backups else "")
            + f" in {time.monotonic() - started:.2f}s"
        )
        done = [results[key] for key in work]
        self.running += done
        return done

    def forward_logs(self, logs: str) -> None:
        for line in logs.splitlines():
            try:
                doc = json.loads(line)
                if doc.get("level") in ("info", "warn", "error"):
                    tag = "" if doc["level"] == "info" else f"{doc['level']} "
                    self.log(f"[{doc['label']}] {tag}{doc['message']}")
                if doc.get("level") in ("warn", "error") and len(self.warnings) < MAX_WARNINGS:
                    self.warnings.append({"level": doc["level"], "label": doc["label"], "message": doc["message"]})
            except (ValueError, KeyError, AttributeError):
                if line.strip():
                    self.log(line)


def connect(address: str | None, env: dict[str, str]) -> int:
    """Connect to the Ray cluster at `address` (or start one here), handing
    the store's settings to its workers; the CPUs it has."""
    keep = ("AWS_", "GOOGLE_", "AZURE_", "WASMPIPE_")
    env_vars = {k: v for k, v in env.items() if k.startswith(keep)}
    ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False, logging_level="warning")
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def is_local_path(store: str) -> bool:
    return "://" not in store or store.startswith("file://")


def human_bytes(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v, unit = float(n), 0
    while v >= 1024 and unit < len(units) - 1:
        v /= 1024
        unit += 1
    return f"{n} B" if unit == 0 else f"{v:.1f} {units[unit]}"


# The longest report value the run summary prints (as `wasmpipe run`).
MAX_REPORT_VALUE = 200


def _values(v: object) -> int:
    """How many numbers, strings and booleans `v` holds."""
    if isinstance(v, list):
        return sum(_values(i) for i in v)
    if isinstance(v, dict):
        return sum(_values(i) for i in v.values())
    return 1


def print_summary(summaries: list[StageSummary], run_id: str, seconds: float) -> None:
    """The table a local run prints, then each stage's report."""
    header = ["stage", "kind", "tasks", "passes", "rows in", "rows out", "quarantined", "read", "written", "time"]
    rows = []
    for s in summaries:
        if s.committed_before:
            tasks = "committed"
        else:
            tasks = str(s.tasks) + (f" ({s.resumed} resumed)" if s.resumed else "")
            tasks += f" ({s.retried} retried)" if s.retried else ""
        rows.append([
            s.name, s.kind, tasks, str(s.passes) if s.passes else "-", str(s.rows_in), str(s.rows_out),
            str(s.quarantined) if s.quarantined else "-", human_bytes(s.bytes_read), human_bytes(s.bytes_written),
            f"{s.seconds:.2f}s",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(header))
    for r in rows:
        print(line(r))
    print(f"run {run_id} finished in {seconds:.2f}s on Ray")
    print("outputs:")
    width = max((len(s.name) for s in summaries), default=0)
    for s in summaries:
        print(f"  {s.name.ljust(width)} {s.output}")
    for s in summaries:
        doc = s.report if s.report is not None else (s.result if s.kind == "aggregator" else None)
        if not isinstance(doc, dict):
            continue
        print(f"{'report' if s.report is not None else 'result'} of {s.name}:")
        for k, v in doc.items():
            if isinstance(v, float):
                print(f"{k} = {v:.3e}" if 0 < abs(v) < 5e-5 else f"{k} = {v:.4f}")
            elif isinstance(v, list) and any(isinstance(i, dict) for i in v):
                print(f"{k} =")
                for item in v:
                    print(f"  {json.dumps(item, separators=(',', ':'))}")
            else:
                text = json.dumps(v, separators=(",", ":"))
                # What the run report plots (curves, samples), as `wasmpipe run` says it.
                if len(text) > MAX_REPORT_VALUE:
                    text = f"({_values(v)} values; plotted in the run report)"
                print(f"{k} = {text}")
