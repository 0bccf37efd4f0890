"""Fixtures: a Ray cluster on loopback (a head with no CPUs and two worker
nodes of one CPU each), moto's S3 server, and the `wasmpipe` binary."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind 127.0.0.1, before Ray is imported

import boto3
import pytest
from ray.cluster_utils import Cluster

REPO = Path(__file__).resolve().parents[3]
WASMPIPE = REPO / "target" / "release" / "wasmpipe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3:
    endpoint: str
    bucket: str
    process: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    server = Path(sys.executable).parent / "moto_server"
    assert server.is_file(), f"{server} is missing: run scripts/install-test-deps.sh"
    port = free_port()
    log = open(f"/tmp/wasmpipe-ray-moto-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto did not start within 60 s"
            assert process.poll() is None, "moto exited"
            time.sleep(0.2)
    store = S3(endpoint, "wasmpipe-ray", process)
    store.client().create_bucket(Bucket=store.bucket)
    yield store
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture()
def prefix() -> str:
    return f"ray-{uuid.uuid4().hex[:12]}"


def env_for(s3: S3) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WASMPIPE_", "RAY_ADDRESS"))}
    env.update(s3.env())
    env["WASMPIPE_PYTHON"] = sys.executable
    return env


def wasmpipe(s3: S3, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    assert WASMPIPE.is_file(), f"{WASMPIPE} is missing: build it with `cargo build --release -p wasmpipe-cli`"
    return subprocess.Popen(
        [str(WASMPIPE), *args],
        cwd=REPO,
        env={**env_for(s3), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_ok(s3: S3, *args: str, timeout: float = 600) -> tuple[str, str]:
    p = wasmpipe(s3, *args)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)}: exit {p.returncode}\n{out}\n{err}"
    return out, err


def normalize(rel: str, data: bytes) -> bytes | None:
    """What must not depend on the engine (as in host/cli/tests/engines.rs)."""
    if (
        rel.startswith("_plans/")
        or rel.startswith("_runs/")
        or (rel.startswith("_models/") and (rel.endswith("card.json") or "/evaluations/" in rel))
    ):
        return None
    if rel.endswith("_wasmpipe_commit.json"):
        record = json.loads(data)
        record.pop("run_id", None)
        record.pop("committed_at", None)
        return json.dumps(record, sort_keys=True).encode()
    return data


def snapshot(s3: S3, prefix: str, *, empty: bool = True) -> dict[str, bytes]:
    """Every object under `prefix`, normalized; the prefix emptied after."""
    client = s3.client()
    out: dict[str, bytes] = {}
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            keys.append(obj["Key"])
    for key in keys:
        data = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        rel = key[len(prefix) + 1 :]
        kept = normalize(rel, data)
        if kept is not None:
            out[rel] = kept
    if empty:
        for key in keys:
            client.delete_object(Bucket=s3.bucket, Key=key)
    return out


def assert_same(local: dict[str, bytes], other: dict[str, bytes], what: str) -> None:
    assert sorted(local) == sorted(other), f"{what}: objects differ: {sorted(set(local) ^ set(other))}"
    differ = [k for k in local if local[k] != other[k]]
    assert not differ, f"{what}: bytes differ: {differ}"
    assert any(k.endswith(".parquet") for k in local), f"{what}: no parts compared"


def metrics(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if " = " in line]


def task_processes(store: str) -> list[int]:
    """Pids of `wasmpipe task` processes writing into `store`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) > 1 and args[1] == b"task" and store.encode() in args:
            pids.append(int(entry.name))
    return pids


__all__ = ["REPO", "WASMPIPE", "shutil"]
