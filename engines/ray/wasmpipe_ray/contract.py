"""The wasmpipe task contract, from Python: the `wasmpipe` binary's `plan`,
`prepare`, `task`, `commit` and `record` commands (see
docs/commit-protocol.md)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field

#: Exit codes of `wasmpipe task`, `prepare` and `commit`.
EXIT_OK = 0
EXIT_DETERMINISTIC = 65
EXIT_INTERNAL = 70
EXIT_TRANSIENT = 75


class ContractError(Exception):
    """A `wasmpipe` command failed: its exit code and message."""

    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"wasmpipe {command}: {message}")
        self.command = command
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StageTasks:
    """What `wasmpipe prepare` says of a stage."""

    stage: str
    kind: str
    output: str
    committed: bool
    partitions: int
    fit_tasks: int
    combine_levels: list[int]
    max_passes: int
    transform_tasks: int
    parallelism: int | None

    @staticmethod
    def of(doc: dict) -> StageTasks:
        return StageTasks(
            stage=doc["stage"],
            kind=doc["kind"],
            output=doc["output"],
            committed=doc["committed"],
            partitions=doc["partitions"],
            fit_tasks=doc["fit_tasks"],
            combine_levels=list(doc["combine_levels"]),
            max_passes=doc["max_passes"],
            transform_tasks=doc["transform_tasks"],
            parallelism=doc.get("parallelism"),
        )


def failure(stdout: str, code: int) -> str:
    """The message a failed `wasmpipe` command printed as JSON on stdout."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    return f"exited with code {code} without saying why"


@dataclass(frozen=True)
class Wasmpipe:
    """The `wasmpipe` binary, run here (by the driver)."""

    binary: str
    store: str
    env: dict[str, str] = field(default_factory=dict)

    def _run(self, command: str, args: list[str], stdin: str | None = None) -> str:
        """Run a command; a transient failure (exit 75) is retried with
        backoff, as every command of the contract may be repeated."""
        for attempt in range(1, 5):
            try:
                return self._run_once(command, args, stdin)
            except ContractError as e:
                if e.code != EXIT_TRANSIENT or attempt == 4:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _run_once(self, command: str, args: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(
            [self.binary, command, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env or None,
            check=False,
        )
        if proc.returncode != EXIT_OK:
            message = failure(proc.stdout, proc.returncode)
            if message.startswith("exited with code") and proc.stderr.strip():
                message = proc.stderr.strip()
            raise ContractError(command, proc.returncode, message)
        return proc.stdout

    def publish_plan(
        self, target: str, root: str | None, allow_input: list[str], allow_output: list[str]
    ) -> tuple[str, dict]:
        """Resolve a manifest (or a deployed pipeline), check it against
        what the run may read and write, and keep its plan in the store: its
        URL and the plan document."""
        args = [target, "--json", "--publish", self.store]
        if root is not None:
            args += ["--from", root]
        for prefix in allow_input:
            args += ["--allow-input", prefix]
        for prefix in allow_output:
            args += ["--allow-output", prefix]
        doc = json.loads(self._run("plan", args))
        return doc["url"], doc["plan"]

    def prepare(self, plan: str, stage: str) -> StageTasks:
        out = self._run("prepare", ["--plan", plan, "--stage", stage, "--store", self.store])
        return StageTasks.of(json.loads(out))

    def commit(self, plan: str, stage: str, run_id: str) -> dict:
        out = self._run("commit", ["--plan", plan, "--stage", stage, "--store", self.store, "--run-id", run_id])
        return json.loads(out.strip().splitlines()[-1])

    def record(self, plan: str, log: dict) -> dict:
        """Keep the run's record and HTML report in the store, from what the
        driver saw (`log`, as docs/run-record.md describes): where they are."""
        out = self._run("record", ["--plan", plan, "--store", self.store], stdin=json.dumps(log))
        return json.loads(out.strip().splitlines()[-1])
