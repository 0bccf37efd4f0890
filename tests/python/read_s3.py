"""Read a committed wasmpipe output straight from an S3-compatible server,
as a data engineer would, with pyarrow's own S3 client (no wasmpipe code).

usage: read_s3.py OUTPUT_URL   (s3://bucket/prefix/of/a/stage)
The server and credentials come from the standard AWS_* variables.

Prints JSON: the commit's run id, its parts, the rows and columns read, and
the sum of each numeric column (for comparison with a local run).
"""
import json
import os
import sys

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

url = sys.argv[1]
assert url.startswith("s3://"), url
endpoint = os.environ["AWS_ENDPOINT_URL"]
scheme, host = endpoint.split("://", 1)
fs = pafs.S3FileSystem(
    access_key=os.environ["AWS_ACCESS_KEY_ID"],
    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region=os.environ["AWS_REGION"],
    endpoint_override=host,
    scheme=scheme,
)
path = url[len("s3://"):].rstrip("/")
with fs.open_input_stream(f"{path}/_wasmpipe_commit.json") as f:
    commit = json.load(f)
tables = [pq.read_table(f"{path}/{p['name']}", filesystem=fs) for p in commit["parts"]]
rows = sum(t.num_rows for t in tables)
sums = {}
for t in tables:
    for name in t.column_names:
        if t[name].type in ("double", "int64"):
            sums[name] = sums.get(name, 0.0) + float(pc.sum(t[name]).as_py() or 0.0)
# Everything under the prefix that is not in the commit (must be nothing
# but the record itself once a run has finished).
listed = sorted(i.path[len(path) + 1:] for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.is_file)
print(json.dumps({
    "run_id": commit["run_id"],
    "parts": [p["name"] for p in commit["parts"]],
    "rows": rows,
    "columns": tables[0].column_names if tables else [],
    "sums": sums,
    "listed": listed,
}))
