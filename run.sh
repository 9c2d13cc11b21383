#!/usr/bin/env bash
# The two newcomer commands (see README):
#   ./run.sh demo   run the whole chain on the bundled real sample data (offline)
#   ./run.sh test   run the whole test suite (starts its own Label Studio and LLM test servers)
# Both create ./.venv and install what they need on first use.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VGMED_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
    local stamp="$VENV/.vgmed-installed"
    if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || setup.py -nt "$stamp" ]]; then
        [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
        # torch is pinned to the CPU build; install a CUDA build yourself on a GPU machine.
        "$VENV/bin/pip" install -q torch==2.13.0 -e '.[eval,hub,dask,test]'
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo)
        setup
        shift
        exec "$VENV/bin/vgmed-build" demo "$@"
        ;;
    test)
        setup
        shift
        "$VENV/bin/ruff" check .
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
