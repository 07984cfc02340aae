#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine for deps: system libraries FFCV builds against, a virtual environment
# (.venv), a torch/torchvision pair that imports together, and this package in editable mode with its extras.
#
# Re-running is cheap: every step checks first and does nothing when its result is already there. A stamp file keyed
# on the inputs of the install (this script and setup.py) skips the pip work entirely when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEPS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
STAMP="$VENV/.deps-bootstrap"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# pip from the registry only: the local torch wheel folder holds a CPU build that PyPI's torchvision cannot load with.
pip_registry() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip "$@"; }

system_libs() {
    if pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then
        return
    fi
    log "installing the system libraries FFCV builds against (pkg-config, libopencv-dev, libturbojpeg0-dev)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { log "need root or sudo to apt-get install pkg-config libopencv-dev libturbojpeg0-dev"; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        pkg-config libopencv-dev libturbojpeg0-dev >/dev/null
}

torch_pair_ok() {
    "$VENV/bin/python" - <<EOF >/dev/null 2>&1
import torch, torchvision
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # loads torchvision's C++ ops against this torch
EOF
}

stamp_key() {
    cat "$ROOT/scripts/bootstrap.sh" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}

main() {
    system_libs
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating the virtual environment $VENV"
        "$PY" -m venv "$VENV"
    fi
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_key)" ] && torch_pair_ok; then
        return
    fi
    if ! torch_pair_ok; then
        log "installing torch==$TORCH_VERSION and torchvision==$TORCHVISION_VERSION from the registry (~1 min)"
        pip_registry install -q --upgrade pip
        pip_registry install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
    log "installing deps in editable mode with its test and bench extras"
    pip_registry install -q -e "$ROOT[test]"
    torch_pair_ok || { log "torch and torchvision still do not import together"; exit 1; }
    stamp_key >"$STAMP"
    log "ready: $VENV"
}

main "$@"
