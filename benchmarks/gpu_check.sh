#!/usr/bin/env bash
# The GPU check of prefgame, at most 8 minutes on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh OUT
#
# 1. install: a virtual environment (.venv-gpu, beside the repository's .venv; it sees the system's
#    packages, so a CUDA PyTorch already installed there is used as it is), PyTorch's default (CUDA)
#    build from PyPI when none imports, then pip install -e ".[dev]";
# 2. the GPU-only tests: tests/test_gpu.py (bf16 autocast trains every layer, a LoRA step, sampling) and
#    the CUDA test of the tabular solver, which the default suite skips without a GPU;
# 3. benchmarks/bench_scale.py --device cuda: peak GPU memory, tokens/s and model-FLOP utilization of the
#    DPO step and the self-play iteration at the Qwen2.5-0.5B and Llama-3.2-1B shapes.
#
# Each step runs under `timeout`; the benchmark gets what is left of the 8 minutes. Everything goes to OUT:
# summary.txt (one line per step: status and seconds), nvidia-smi.txt, install.log, tests.log, tests.xml
# (JUnit), bench/ (table.md, results.json, a log per configuration) and bench.log. Exit status 0 when
# every step passed, 1 otherwise; a machine without a GPU stops at once with one line on stderr.
# GPU_CHECK_PYTHON=/path/to/python skips the installation and uses that interpreter.
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT" >&2
    exit 2
fi
mkdir -p "$1" || { echo "gpu_check: cannot create the output folder $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
TOTAL=470 # seconds for the three steps: 8 minutes, less a margin for what runs between them
START=$SECONDS
: > "$OUT/summary.txt"

left() { echo $((TOTAL - (SECONDS - START))); }
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
stop() { # one line on stderr (and in summary.txt), then exit 1
    echo "gpu_check: $*" >> "$OUT/summary.txt"
    echo "gpu_check: $*" >&2
    exit 1
}

if ! nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
    stop "no CUDA GPU: nvidia-smi is missing or fails (see $OUT/nvidia-smi.txt)"
fi

# -- 1. install ------------------------------------------------------------------------------------------
t0=$SECONDS
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
    echo "using $PY, no installation" > "$OUT/install.log"
else
    PY=.venv-gpu/bin/python
    PIP=("$PY" -m pip --disable-pip-version-check --no-input install --retries 1 --timeout 20)
    install() {
        [ -x "$PY" ] || python3 -m venv --system-site-packages .venv-gpu || return 1
        if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
            timeout $(($(left) - 250)) "${PIP[@]}" "torch==2.13.0" || return 1
        fi
        timeout $(($(left) - 240)) "${PIP[@]}" -e ".[dev]"
    }
    install > "$OUT/install.log" 2>&1 || stop "installation failed after $((SECONDS - t0)) s (see $OUT/install.log)"
fi
"$PY" - >> "$OUT/install.log" 2>&1 << 'EOF' || stop "PyTorch sees no CUDA device (see $OUT/install.log)"
import torch, transformers, prefgame
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}")
EOF
note "install: ok ($((SECONDS - t0)) s): $(tail -1 "$OUT/install.log")"

# -- 2. the GPU-only tests ---------------------------------------------------------------------------------
t0=$SECONDS
status=0
timeout $(($(left) < 240 ? $(left) / 3 : 120)) "$PY" -m pytest -q -p no:cacheprovider -rs \
    --junitxml="$OUT/tests.xml" tests/test_gpu.py tests/test_game_tabular.py::test_solver_and_dynamics_on_cuda \
    > "$OUT/tests.log" 2>&1 || status=$?
if [ $status -eq 0 ] && grep -q "SKIPPED" "$OUT/tests.log"; then
    status=3 # a GPU test skipped on a GPU machine is a failure of this check
fi
note "tests: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status)") ($((SECONDS - t0)) s): $(tail -1 "$OUT/tests.log")"
failed=$((status != 0))

# -- 3. the benchmark --------------------------------------------------------------------------------------
t0=$SECONDS
budget=$(($(left) - 30))
status=0
if [ $budget -lt 60 ]; then
    note "bench_scale: not run (${budget} s left)"
    failed=1
else
    timeout $((budget + 25)) "$PY" benchmarks/bench_scale.py --device cuda --steps 3 --budget "$budget" \
        --out "$OUT/bench" --cache-dir "${TMPDIR:-/tmp}/prefgame-bench-scale" > "$OUT/bench.log" 2>&1 || status=$?
    note "bench_scale: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status)") ($((SECONDS - t0)) s): $OUT/bench/table.md"
    failed=$((failed || status != 0))
fi
note "total: $((SECONDS - START)) s"
exit $failed
