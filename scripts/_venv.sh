# shellcheck shell=bash
# Sourced by scripts/demo, scripts/test and .ci/run: make sure .venv at the top of the
# checkout exists and holds requirements.txt plus tuna itself (editable: go_fish finds the
# libraries through the package's entry points), then put .venv/bin first on PATH.
#
# pip runs only when something it depends on changed: a stamp file inside .venv holds a
# hash of requirements.txt, pyproject.toml, the checkout's path and the venv's Python.
# A venv where tuna's entry points are missing (pip uninstall, a failed install) is
# reinstalled too. Set PYTHON to choose the interpreter that creates the venv.

TUNA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TUNA_VENV="$TUNA_ROOT/.venv"

# Prints the hash the stamp must hold, or "not-installed" when tuna is not in the venv.
tuna_install_hash() {
    "$TUNA_VENV/bin/python" - "$TUNA_ROOT" <<'EOF'
import hashlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

root = Path(sys.argv[1])
digest = hashlib.sha256()
for name in ("requirements.txt", "pyproject.toml"):
    digest.update((root / name).read_bytes())
digest.update(f"{root}\n{sys.version}".encode())
print(digest.hexdigest() if entry_points(group="tuna.libraries") else "not-installed")
EOF
}

tuna_pip() {
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$TUNA_VENV/bin/python" -m pip install -q "$@"
}

tuna_venv_bootstrap() {
    local python="${PYTHON:-python3}"
    if [ ! -x "$TUNA_VENV/bin/python" ]; then
        if ! command -v "$python" >/dev/null 2>&1; then
            echo "error: $python not found; install Python 3.10 or newer, or set PYTHON=/path/to/python3" >&2
            return 1
        fi
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            echo "error: tuna needs Python 3.10 or newer; $python is $("$python" -V 2>&1)" >&2
            return 1
        fi
        echo "==> creating $TUNA_VENV ($("$python" -V 2>&1))"
        if ! "$python" -m venv "$TUNA_VENV"; then
            rm -rf "$TUNA_VENV"
            echo "error: could not create $TUNA_VENV; on Debian or Ubuntu: apt-get install python3-venv" >&2
            return 1
        fi
    fi

    local stamp="$TUNA_VENV/.tuna-install-stamp" want
    want="$(tuna_install_hash)"
    if [ "$want" = "not-installed" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "==> installing requirements.txt and tuna (pip install -e .) into .venv"
        rm -f "$stamp"
        if ! tuna_pip -r "$TUNA_ROOT/requirements.txt" || ! tuna_pip -e "$TUNA_ROOT"; then
            echo "error: pip install failed (see above); fix it, or remove $TUNA_VENV and try again" >&2
            return 1
        fi
        want="$(tuna_install_hash)"
        if [ "$want" = "not-installed" ]; then
            echo "error: tuna is installed in $TUNA_VENV but its entry points (tuna.libraries) are missing" >&2
            return 1
        fi
        echo "$want" >"$stamp"
    fi

    export VIRTUAL_ENV="$TUNA_VENV"
    export PATH="$TUNA_VENV/bin:$PATH"
    unset PYTHONHOME
}

tuna_venv_bootstrap
