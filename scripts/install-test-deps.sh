#!/usr/bin/env bash
# Python packages the tests use as independent references and readers
# (pyarrow, DuckDB, numpy, scikit-learn), in a virtualenv under .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pyarrow, duckdb, numpy, sklearn' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check pyarrow duckdb numpy scikit-learn
fi
"$VENV/bin/python" -c 'import pyarrow, duckdb, numpy, sklearn; print("test python:", pyarrow.__version__, duckdb.__version__, numpy.__version__, sklearn.__version__)'
