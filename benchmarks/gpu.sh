#!/usr/bin/env bash
# The GPU benchmark in one command, for one H100 or H200 with PyTorch (>= 2.10) and
# Python preinstalled and only package registries reachable:
#
#   benchmarks/gpu.sh              install torchtpu[cuda,test], run the tests marked gpu,
#                                  time bf16 training (benchmarks/gpu.py), write
#                                  benchmarks/gpu_results.md
#   benchmarks/gpu.sh --dry-run    the same steps on a machine without a GPU: no install,
#                                  the gpu tests skip, tiny models on the CPU for 2 steps
#
# Other arguments go to benchmarks/gpu.py (--models, --systems, --rounds, --no-write...).
# Python: $PYTHON if set, else .venv/bin/python if there is one, else python on PATH.
# $PIP_ARGS is added to the pip command (e.g. --break-system-packages, --index-url ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then dry=1; fi
done

if [[ -n ${PYTHON:-} ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
elif command -v python >/dev/null; then
    py=$(command -v python)
else
    py=$(command -v python3)
fi

start=$SECONDS
stage() { printf '\n== %s (%d s so far)\n' "$1" $((SECONDS - start)); }
echo "python: $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"

stage "install torchtpu[cuda,test]"
if ((dry)); then
    echo "dry run: install skipped (it would pip install -e '.[cuda,test]', torch held at" \
        "$("$py" -c 'import torch; print(torch.__version__)'))"
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # Keep the preinstalled torch: without the constraint pip could swap it for another build.
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    "$py" -c 'import torch; print(f"torch=={torch.__version__}")' >"$constraints"
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words
    "$py" -m pip install --quiet --constraint "$constraints" ${PIP_ARGS:-} -e ".[cuda,test]"
    "$py" -c 'import jax, torch; print("jax", jax.__version__, jax.devices("gpu"), "| torch", torch.__version__, torch.cuda.get_device_name())'
fi

stage "tests marked gpu"
tests=0
# -m gpu replaces pyproject's -m 'not slow'; -rs prints why a test skipped.
"$py" -m pytest tests/gpu tests/kernels/test_triton_native.py -m gpu -q -rs -p no:cacheprovider || tests=$?
if ((dry)); then
    echo "dry run: without a CUDA GPU and CUDA JAX the gpu tests skip (reasons above)"
fi

stage "bf16 training benchmark"
"$py" benchmarks/gpu.py "$@"

stage "done"
elapsed=$((SECONDS - start))
echo "benchmarks/gpu.sh took ${elapsed} s$( ((dry)) || ((elapsed <= 300)) || echo ' (over the 5-minute budget)')"
if ((tests != 0)); then
    echo "the gpu tests FAILED (pytest exit status $tests); the benchmark ran anyway" >&2
    exit "$tests"
fi
