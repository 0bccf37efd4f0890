"""`python -m wasmpipe_ray run ...`: the Ray engine's command line."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from urllib.parse import urlsplit

import ray

from .contract import EXIT_DETERMINISTIC, EXIT_INTERNAL, ContractError, Wasmpipe
from .driver import Driver, StageFailed, StageSummary, connect, is_local_path, print_summary


def absolute(location: str) -> str:
    return location if "://" in location else os.path.abspath(location)


def is_remote(address: str | None) -> bool:
    """Whether a Ray address names another machine."""
    if address in (None, "", "local"):
        return False
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    return host not in ("127.0.0.1", "localhost", "::1")


def run_pipeline(
    target: str,
    *,
    root: str | None = None,
    store: str | None = None,
    address: str | None = None,
    binary: str | None = None,
    store_is_shared: bool = False,
    straggler_factor: float = 3.0,
    straggler_floor_s: float = 5.0,
    allow_input: list[str] | None = None,
    allow_output: list[str] | None = None,
) -> tuple[str, list[StageSummary]]:
    """Run a pipeline (a manifest, or `NAME[@VERSION]` deployed under
    `root`) on the Ray cluster at `address`; the run id and each stage's
    summary. Raises StageFailed or ContractError."""
    binary = binary or shutil.which("wasmpipe") or "wasmpipe"
    if not os.path.isabs(binary):
        binary = shutil.which(binary) or binary
    if store is None:
        store = f"{root.rstrip('/')}/data" if root else "wasmpipe-data"
    store = absolute(store)
    if is_local_path(store) and is_remote(address) and not store_is_shared:
        raise ContractError(
            "run",
            EXIT_DETERMINISTIC,
            f"the store {store} is a local path, but the Ray cluster at {address} runs tasks on other machines, "
            "which cannot see it\n  hint: use an object store (s3://...), or a path every node mounts and say so "
            "with --store-is-shared",
        )
    wasmpipe = Wasmpipe(binary=binary, store=store, env=dict(os.environ))
    target = target if root else absolute(target)
    plan_url, plan = wasmpipe.publish_plan(target, root, allow_input or [], allow_output or [])
    capacity = connect(address, dict(os.environ))
    driver = Driver(
        wasmpipe=wasmpipe,
        plan_url=plan_url,
        plan=plan,
        capacity=capacity,
        straggler_factor=straggler_factor,
        straggler_floor_s=straggler_floor_s,
    )
    driver.log(f'running pipeline "{plan["pipeline"]}" on Ray ({capacity} CPUs, {len(plan["stages"])} stages)')
    try:
        return driver.run_id, driver.run()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmpipe-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline on a Ray cluster")
    run.add_argument("target", help="the manifest, or NAME[@VERSION] with --from")
    run.add_argument("--from", dest="root", help="the deployment root")
    run.add_argument("--store", help="where outputs go (default wasmpipe-data, or ROOT/data)")
    run.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS, or a new one here)")
    run.add_argument("--binary", help="the wasmpipe binary on the nodes (default: wasmpipe on PATH)")
    run.add_argument("--store-is-shared", action="store_true", help="a local store path every node mounts")
    run.add_argument("--allow-input", action="append", default=[], help="let the pipeline read below this prefix")
    run.add_argument("--allow-output", action="append", default=[], help="let the pipeline write below this prefix")
    run.add_argument(
        "--straggler-factor",
        type=float,
        default=float(os.environ.get("WASMPIPE_RAY_STRAGGLER_FACTOR", "3")),
        help="back up a task this many times slower than the median of its round (WASMPIPE_RAY_STRAGGLER_FACTOR)",
    )
    run.add_argument(
        "--straggler-floor",
        type=float,
        default=float(os.environ.get("WASMPIPE_RAY_STRAGGLER_FLOOR", "5")),
        help="... once it ran at least this many seconds (WASMPIPE_RAY_STRAGGLER_FLOOR)",
    )
    args = parser.parse_args(argv)
    # Stopped (a pod evicted, `timeout`): end as an interrupted run, so the
    # driver still keeps the run's record.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    try:
        run_id, summaries = run_pipeline(
            args.target,
            root=args.root,
            store=args.store,
            address=args.address or os.environ.get("RAY_ADDRESS"),
            binary=args.binary,
            store_is_shared=args.store_is_shared,
            straggler_factor=args.straggler_factor,
            straggler_floor_s=args.straggler_floor,
            allow_input=args.allow_input,
            allow_output=args.allow_output,
        )
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code if e.code in (65, 70, 75) else EXIT_INTERNAL
    except ContractError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code if e.code in (65, 70, 75) else EXIT_INTERNAL
    print_summary(summaries, run_id, time.monotonic() - started)
    return 0
