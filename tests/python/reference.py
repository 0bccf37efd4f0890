"""Independent reference checks for the demo pipeline, outside wasmpipe.

usage: reference.py DIABETES_CSV FIT_OUTPUT_DIR [EVALUATE_OUTPUT_DIR]

Fits ordinary least squares with numpy on the raw CSV, reads wasmpipe's
committed predictions with pyarrow (and counts them with DuckDB), and prints
a JSON report comparing the two. Given the evaluate stage's output, it also
reads the committed report: its JSON, and its Parquet table with DuckDB.
"""
import json
import os
import sys

import duckdb
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

csv_path, out_dir = sys.argv[1], sys.argv[2]
table = pacsv.read_csv(csv_path)
features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
X = np.column_stack([np.ones(table.num_rows)] + [table[c].to_numpy().astype(float) for c in features])
y = table["target"].to_numpy().astype(float)
beta, *_ = np.linalg.lstsq(X, y, rcond=None)
pred = X @ beta
r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()

with open(os.path.join(out_dir, "_wasmpipe_commit.json")) as f:
    commit = json.load(f)
parts = [os.path.join(out_dir, p["name"]) for p in commit["parts"]]
ours = np.concatenate([pq.read_table(p)["prediction"].to_numpy() for p in parts])
ours_target = np.concatenate([pq.read_table(p)["target"].to_numpy() for p in parts])
con = duckdb.connect()
n_duck, sum_duck = con.execute(
    "select count(*), sum(prediction) from read_parquet([%s])" % ",".join("'%s'" % p for p in parts)
).fetchall()[0]

report = {}
if len(sys.argv) > 3:
    eval_dir = sys.argv[3]
    with open(os.path.join(eval_dir, "_wasmpipe_commit.json")) as f:
        files = json.load(f)["report"]
    with open(os.path.join(eval_dir, files["json"])) as f:
        report["report_json"] = json.load(f)
    rows = con.execute(
        "select metric, value from read_parquet('%s') where class is null" % os.path.join(eval_dir, files["table"])
    ).fetchall()
    report["report_table"] = {m: v for m, v in rows}

print(json.dumps({
    **report,
    "numpy_r2": float(r2),
    "rows": int(len(ours)),
    "max_abs_prediction_diff": float(np.max(np.abs(ours - pred))),
    "targets_in_order": bool(np.array_equal(ours_target, y)),
    "duckdb_rows": int(n_duck),
    "duckdb_sum_diff": float(abs(sum_duck - pred.sum())),
}))
