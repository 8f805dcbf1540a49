#!/usr/bin/env bash
# The installed house: a wheel holds one top-level package, prefloop/, and it lives beside
# Hugging Face's `evaluate` (common in ML environments) without either shadowing the other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

"$PY" -m pip wheel -q --no-deps . -w "$work/dist" >/dev/null
wheel=$(ls "$work"/dist/prefloop-*.whl)
tops=$("$PY" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(" ".join(sorted({n.split("/")[0] for n in names})))
PY
)
echo "wheel top level: $tops"
for top in $tops; do
  case "$top" in prefloop|prefloop-*.dist-info) ;; *) echo "unexpected top-level entry in the wheel: $top" >&2; exit 1;; esac
done

# A fresh venv that sees the system's dependencies (torch & co.), holding the wheel and HF evaluate.
"$PY" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "$wheel"
"$work/venv/bin/python" -m pip install -q evaluate
cd "$work"  # away from the checkout, so nothing resolves to the source tree
"$work/venv/bin/python" - <<'PY'
import evaluate, prefloop, prefloop.evaluate.arena
assert callable(evaluate.load), "evaluate.load is not Hugging Face's"
assert "site-packages/evaluate" in evaluate.__file__, evaluate.__file__
assert "/venv/" in prefloop.__file__, prefloop.__file__
print("HF evaluate:", evaluate.__file__, "| prefloop:", prefloop.__file__)
PY
"$work/venv/bin/prefloop" --help >/dev/null
"$work/venv/bin/prefloop" eval --help >/dev/null
echo "wheel check passed: one top-level package; prefloop and Hugging Face's evaluate coexist"
