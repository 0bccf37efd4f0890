#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain:
# - Python packages the tests use as independent references and readers
#   (pyarrow, DuckDB, numpy, scikit-learn; Polars for the peers bench) and
#   moto's S3 server, in a virtualenv under .tools/;
# - Debian's Chromium, headless, for the HTML report tests;
# - Garage, a real S3-compatible server, cached outside the repository
#   (building it takes minutes) so a re-run on the same machine is instant.
# Idempotent, and quiet when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pyarrow, duckdb, numpy, sklearn, polars' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check pyarrow duckdb numpy scikit-learn polars
fi
if ! "$VENV/bin/python" -c 'import moto.server, boto3' 2>/dev/null || [ ! -x "$VENV/bin/moto_server" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]'
fi
# The Ray engine (engines/ray, installed editable) and what its tests and
# the Kubernetes rendering tests use: Ray, pytest, offline Kubernetes schemas.
if ! "$VENV/bin/python" -c 'import ray, pytest, yaml, kubernetes_validate, wasmpipe_ray' 2>/dev/null || [ ! -x "$VENV/bin/maturin" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'ray[default]' pytest pyyaml kubernetes-validate maturin
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e engines/ray
fi
# Python stages: componentize-py builds them (the release the SDK targets).
scripts/install-componentize-py.sh >/dev/null

# Chromium, headless, opens the HTML run reports in host/cli/tests/report.rs.
if ! command -v chromium >/dev/null && [ -z "${WASMPIPE_CHROMIUM:-}" ]; then
    echo "installing chromium (Debian's package) for the run report tests..."
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi

# Garage: the tests look for it here (or in $WASMPIPE_GARAGE).
GARAGE_VERSION=2.5.0
GARAGE_ROOT="$HOME/.cache/wasmpipe/garage-$GARAGE_VERSION"
GARAGE="$GARAGE_ROOT/bin/garage"
if [ ! -x "$GARAGE" ]; then
    mkdir -p "$GARAGE_ROOT/bin"
    # A garage already on PATH of exactly this version saves the build.
    existing=$(command -v garage || true)
    if [ -n "$existing" ] && "$existing" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
        cp "$existing" "$GARAGE.tmp" && mv "$GARAGE.tmp" "$GARAGE"
    else
        echo "building garage $GARAGE_VERSION (takes a while, once per machine)..."
        cargo install garage --locked --quiet --version "$GARAGE_VERSION" --root "$GARAGE_ROOT"
    fi
fi

"$VENV/bin/python" -c 'import pyarrow, duckdb, numpy, sklearn; print("test python:", pyarrow.__version__, duckdb.__version__, numpy.__version__, sklearn.__version__)'
"$VENV/bin/python" -c 'import moto, boto3; print("moto:", moto.__version__, "boto3:", boto3.__version__)'
"$VENV/bin/python" -c 'import ray, kubernetes_validate; print("ray:", ray.__version__)'
echo "garage: $("$GARAGE" --version | head -n1)"
echo "chromium: $("${WASMPIPE_CHROMIUM:-chromium}" --version 2>/dev/null | head -n1)"
