#!/usr/bin/env bash
# componentize-py, which `wasmpipe build` runs to build Python stages, into
# the project's tool venv (.tools/venv, where host/toolchain looks first):
# the release the Python SDK is written against. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
VERSION=0.25.1
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $VERSION" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "componentize-py==$VERSION"
fi
"$VENV/bin/componentize-py" --version
