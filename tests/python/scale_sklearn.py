"""scikit-learn on the scale bench's data: the same logistic regression
(C=1, L2, intercept) fitted with lbfgs on the whole file in memory.

usage: scale_sklearn.py DATA.parquet
Prints JSON: load and fit seconds, iterations, accuracy and log loss on
the training data, and this process's peak RSS in bytes.
"""
import json
import resource
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

t0 = time.perf_counter()
table = pq.read_table(sys.argv[1])
features = [c for c in table.column_names if c != "target"]
X = np.column_stack([table[c].to_numpy() for c in features])
y = table["target"].to_numpy()
del table
t1 = time.perf_counter()
model = LogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(X, y)
t2 = time.perf_counter()
proba = model.predict_proba(X)
print(json.dumps({
    "load_s": t1 - t0,
    "fit_s": t2 - t1,
    "iterations": int(np.max(model.n_iter_)),
    "accuracy": float(accuracy_score(y, model.classes_[proba.argmax(axis=1)])),
    "log_loss": float(log_loss(y, proba)),
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
