"""scikit-learn references for the feature stages (tests/features.rs).

usage: features_reference.py JSON

JSON is an object with "task" ("minmax", "imputer", "bucketizer", "poly",
"onehot"), "csv" (the input, blanks read as NaN, or as None in string
columns), "columns", "out_dir" (wasmpipe's
committed output of the stage) and the task's own arguments. Fits the
scikit-learn counterpart on the CSV, transforms it, and prints one JSON
object: the fitted statistics and how far wasmpipe's output is from
scikit-learn's.

Task "onehot_unseen" has no "csv": it fits OneHotEncoder(handle_unknown=
"handle_unknown") on the committed rows in "fit_dir" (the fit's input) and
transforms the committed rows in "apply_dir" (the data the fitted model is
applied to; when "out_dir" is given, wasmpipe's output with the original
columns kept, compared column by column). Prints the output names, the
number of rows with an unseen value, and either the agreement with
wasmpipe's output or scikit-learn's error message.
"""
import json
import os
import sys
import warnings

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import KBinsDiscretizer, MinMaxScaler, OneHotEncoder, PolynomialFeatures


def committed(out_dir):
    with open(os.path.join(out_dir, "_wasmpipe_commit.json")) as f:
        commit = json.load(f)
    tables = [pq.read_table(os.path.join(out_dir, p["name"])) for p in commit["parts"]]
    return {n: np.concatenate([t[n].to_numpy(zero_copy_only=False) for t in tables]) for n in tables[0].column_names}


def matrix(source, names):
    return np.column_stack([np.asarray(source[c], dtype=float) for c in names])


def onehot(table, columns):
    """OneHotEncoder(handle_unknown="ignore") per column: output names (the
    missing-value category, sklearn's `<column>_None`, renamed
    `<column>_null` as wasmpipe's), values, categories."""
    names, blocks, categories = [], [], []
    for c in columns:
        X = np.array(table[c].to_pylist(), dtype=object).reshape(-1, 1)
        m = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(X)
        cats = list(m.categories_[0])
        out = list(m.get_feature_names_out([c]))
        if cats and cats[-1] is None:
            out[-1] = c + "_null"
            cats = cats[:-1]
        names += out
        blocks.append(m.transform(X))
        categories.append([v if isinstance(v, str) else int(v) for v in cats])
    return names, np.hstack(blocks), categories


def onehot_unseen(args):
    train, test = committed(args["fit_dir"]), committed(args["apply_dir"])
    names, blocks, unseen = [], [], np.zeros(len(test[args["columns"][0]]), dtype=bool)
    for c in args["columns"]:
        m = OneHotEncoder(handle_unknown=args["handle_unknown"], sparse_output=False)
        m.fit(np.array(train[c].tolist(), dtype=object).reshape(-1, 1))
        X = np.array(test[c].tolist(), dtype=object).reshape(-1, 1)
        seen = set(m.categories_[0].tolist())
        unseen |= np.array([v not in seen for v in X[:, 0]], dtype=bool)
        out = list(m.get_feature_names_out([c]))
        if m.categories_[0][-1] is None:
            out[-1] = c + "_null"
        names += out
        try:
            blocks.append(m.transform(X))
        except ValueError as e:
            print(json.dumps({"names": names, "unseen_rows": int(unseen.sum()), "error": str(e)}))
            return
    want = np.hstack(blocks)
    result = {"names": names, "unseen_rows": int(unseen.sum()), "rows": int(len(want)),
              "zero_rows": int((want.sum(axis=1) < len(args["columns"])).sum())}
    if "out_dir" in args:
        got = matrix(committed(args["out_dir"]), names)
        result.update(agreement=float(np.mean(got == want)), max_abs_diff=float(np.max(np.abs(got - want))))
    print(json.dumps(result))


def main(args):
    if args["task"] == "onehot_unseen":
        onehot_unseen(args)
        return
    if args["task"] == "onehot":
        table = pacsv.read_csv(args["csv"], convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        names, want, categories = onehot(table, args["columns"])
        got = matrix(committed(args["out_dir"]), names)
        print(json.dumps({"names": names, "categories": categories, "rows": int(len(got)),
                          "agreement": float(np.mean(got == want)), "max_abs_diff": float(np.max(np.abs(got - want)))}))
        return
    table = pacsv.read_csv(args["csv"])
    data = {n: table[n].to_numpy(zero_copy_only=False).astype(float) for n in table.column_names}
    X = matrix(data, args["columns"])
    ours = committed(args["out_dir"])
    out = {}
    task = args["task"]
    if task == "minmax":
        m = MinMaxScaler(feature_range=tuple(args["feature_range"])).fit(X)
        want, names = m.transform(X), args["columns"]
        out.update(data_min=m.data_min_.tolist(), data_max=m.data_max_.tolist(), scale=m.scale_.tolist(), offset=m.min_.tolist())
    elif task == "imputer":
        m = SimpleImputer(strategy=args["strategy"]).fit(X)
        want, names = m.transform(X), args["columns"]
        out.update(statistics=m.statistics_.tolist())
    elif task == "bucketizer":
        m = KBinsDiscretizer(n_bins=args["n_buckets"], encode="ordinal", strategy="quantile",
                             quantile_method=args["quantile_method"]).fit(X)
        want, names = m.transform(X), [c + "_bucket" for c in args["columns"]]
        out.update(edges=[e.tolist() for e in m.bin_edges_])
    elif task == "poly":
        m = PolynomialFeatures(degree=args["degree"], interaction_only=args["interaction_only"], include_bias=False).fit(X)
        names = [n for n in m.get_feature_names_out(args["columns"]) if n not in args["columns"]]
        want = m.transform(X)[:, len(args["columns"]):]
        out.update(names=names)
    got = matrix(ours, names)
    out["rows"] = int(len(got))
    out["max_abs_diff"] = float(np.max(np.abs(got - want)))
    out["max_rel_diff"] = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    out["agreement"] = float(np.mean(got == want))
    print(json.dumps(out))


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(json.loads(sys.argv[1]))
