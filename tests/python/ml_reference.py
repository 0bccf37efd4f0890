"""Independent scikit-learn references for the ML stages (tests/ml.rs).

usage: ml_reference.py JSON

JSON is an object with "task" and its arguments:

  {"task": "logreg", "csv": ..., "features": [...], "target": ..., "c": ...,
   "fit_dir": ...}
      Standardizes the features (population std, as the scaler stage), fits
      LogisticRegression(C=c, max_iter=10000, tol=1e-12) (L2, the default
      penalty), and reads wasmpipe's committed fit output (target,
      prediction, proba_<class>) from fit_dir. Prints sklearn's model, its
      accuracy and log loss, and sklearn.metrics on wasmpipe's predictions.

  {"task": "kmeans", "csv": ..., "features": [...], "scale": bool,
   "k": k | "centroids": [[...], ...], "fit_dir": ...}
      KMeans(n_clusters=k, init=<the first k distinct rows, or the given
      centroids>, n_init=1, tol=0) on the (standardized) features; reads
      wasmpipe's committed `cluster` column from fit_dir. With "kmeanspp":
      {"n_init": n, "random_state": r}, also scikit-learn's own k-means++
      (KMeans(init="k-means++", n_init=n, random_state=r)) inertia.

  {"task": "linreg", "csv": ..., "features": [...], "target": ...,
   "scale": bool, "alphas": [...]}
      Per alpha, LinearRegression() (alpha 0) or Ridge(alpha) (the intercept
      unpenalized) on the (standardized) features: intercept, coefficients.

  {"task": "digits", "csv": path}
      Writes scikit-learn's bundled digits (1,797 rows x 64 pixels, and
      `target`) to path as CSV.

  {"task": "kmeanspp", "csv": ..., "features": [...], "scale": bool, "k": k,
   "n_init": [n, ...], "seeds": [s, ...]}
      Per n_init, KMeans(n_clusters=k, init="k-means++", n_init=n,
      random_state=s, tol=0) inertia for each seed.

Prints one JSON object.
"""
import json
import os
import sys
import warnings

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import (
    average_precision_score,
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def features(table, names, scale):
    X = np.column_stack([table[c].to_numpy().astype(float) for c in names])
    if scale:
        std = X.std(axis=0)  # population std, as the scaler stage
        X = (X - X.mean(axis=0)) / np.where(std == 0, 1.0, std)
    return X


def committed(out_dir):
    with open(os.path.join(out_dir, "_wasmpipe_commit.json")) as f:
        commit = json.load(f)
    tables = [pq.read_table(os.path.join(out_dir, p["name"])) for p in commit["parts"]]
    return {name: np.concatenate([t[name].to_numpy(zero_copy_only=False) for t in tables]) for name in tables[0].column_names}


def logreg(args):
    table = pacsv.read_csv(args["csv"])
    X = features(table, args["features"], True)
    y = table[args["target"]].to_numpy(zero_copy_only=False)
    c = args["c"]
    model = LogisticRegression(C=c, max_iter=10000, tol=1e-12).fit(X, y)
    proba = model.predict_proba(X)
    classes = model.classes_
    # scikit-learn's objective, C * sum(log-loss) + 1/2 |coef|^2, at its solution.
    objective = c * log_loss(y, proba, labels=classes, normalize=False) + 0.5 * float((model.coef_**2).sum())

    ours = committed(args["fit_dir"])
    truth, pred = ours[args["target"]], ours["prediction"]
    ours_proba = np.column_stack([ours["proba_%s" % k] for k in classes])
    labels = np.unique(np.concatenate([truth, pred]))
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=labels, average=None, zero_division=0)
    averages = {
        avg: dict(zip(["precision", "recall", "f1"], precision_recall_fscore_support(
            truth, pred, labels=labels, average=avg, zero_division=0)[:3]))
        for avg in ["macro", "weighted"]
    }
    metrics = {
        "rows": int(len(truth)),
        "accuracy": accuracy_score(truth, pred),
        "classes": labels.tolist(),
        "confusion_matrix": confusion_matrix(truth, pred, labels=labels).tolist(),
        "precision": p.tolist(),
        "recall": r.tolist(),
        "f1": f.tolist(),
        "support": s.tolist(),
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "log_loss": log_loss(truth, ours_proba, labels=classes),
    }
    extra = {}
    if len(classes) == 2:
        metrics["roc_auc"] = roc_auc_score(truth, ours["proba_%s" % classes[1]])
        extra["average_precision"] = average_precision_score(truth == classes[1], ours["proba_%s" % classes[1]])
    print(json.dumps({
        "classes": classes.tolist(),
        "coefficients": model.coef_.tolist(),
        "intercepts": model.intercept_.tolist(),
        "n_iter": int(model.n_iter_[0]),
        "objective": objective,
        "accuracy": model.score(X, y),
        "log_loss": log_loss(y, proba, labels=classes),
        "targets_in_order": bool(np.array_equal(truth, y)),
        "prediction_agreement": float(np.mean(pred == model.predict(X))),
        "max_abs_proba_diff": float(np.abs(ours_proba - proba).max()),
        "metrics_on_ours": metrics,
        **extra,
    }))


def kmeans(args):
    table = pacsv.read_csv(args["csv"])
    X = features(table, args["features"], args["scale"])
    if "centroids" in args:
        init = np.array(args["centroids"], dtype=float)
    else:
        _, first = np.unique(X, axis=0, return_index=True)
        init = X[np.sort(first)[: args["k"]]]
    model = KMeans(n_clusters=len(init), init=init, n_init=1, tol=0.0, max_iter=1000, algorithm="lloyd").fit(X)
    ours = committed(args["fit_dir"])["cluster"]
    out = {
        "init": init.tolist(),
        "inertia": float(model.inertia_),
        "centroids": model.cluster_centers_.tolist(),
        "n_iter": int(model.n_iter_),
        "label_agreement": float(np.mean(ours == model.labels_)),
    }
    if "kmeanspp" in args:
        pp = KMeans(n_clusters=len(init), init="k-means++", algorithm="lloyd", tol=0.0, max_iter=1000,
                    **args["kmeanspp"]).fit(X)
        out["kmeanspp_inertia"] = float(pp.inertia_)
    print(json.dumps(out))


def digits(args):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    header = ["pixel_%d" % i for i in range(bunch.data.shape[1])] + ["target"]
    with open(args["csv"], "w") as f:
        f.write(",".join(header) + "\n")
        for row, target in zip(bunch.data, bunch.target):
            f.write(",".join("%d" % v for v in row) + ",%d\n" % target)
    print(json.dumps({"rows": int(bunch.data.shape[0])}))


def kmeanspp(args):
    X = features(pacsv.read_csv(args["csv"]), args["features"], args["scale"])
    inertias = {
        str(n): [float(KMeans(n_clusters=args["k"], init="k-means++", n_init=n, random_state=seed, tol=0.0,
                              max_iter=1000, algorithm="lloyd").fit(X).inertia_) for seed in args["seeds"]]
        for n in args["n_init"]
    }
    print(json.dumps({"inertias": inertias}))


def linreg(args):
    table = pacsv.read_csv(args["csv"])
    X = features(table, args["features"], args["scale"])
    y = table[args["target"]].to_numpy().astype(float)
    fits = []
    for alpha in args["alphas"]:
        model = LinearRegression() if alpha == 0 else Ridge(alpha=alpha)
        model.fit(X, y)
        fits.append({"alpha": alpha, "intercept": float(model.intercept_), "coefficients": model.coef_.tolist()})
    print(json.dumps({"rows": int(len(y)), "fits": fits}))


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    args = json.loads(sys.argv[1])
    {"logreg": logreg, "kmeans": kmeans, "kmeanspp": kmeanspp, "linreg": linreg, "digits": digits}[args["task"]](args)
