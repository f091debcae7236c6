#!/usr/bin/env bash
# The CUDA path in one run (issue 16): the tests marked cuda (CUDA against CPU in float32, bf16 autocast training,
# greedy and beam decoding, the per-row PrefixBank, PEFT parity, train.py's resume after a SIGKILL, a quick
# bench_peft.py), then bench_peft.py with gpt2-medium's shape; one summary at the end.
#
#     pip install -r requirements-dev.txt && scripts/gpu_check.sh
#     scripts/gpu_check.sh --repeats 5                                       # flags after it go to bench_peft.py
#
# The train.py resume test reads the E2E data of ../shared, or without it the few rows of tests/fixtures.
# Exit status: 0 when the tests and the benchmark both succeeded, 1 otherwise, 2 on a machine without CUDA.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "scripts/gpu_check.sh needs a CUDA GPU, and PyTorch ($PYTHON) sees none here (or is not installed), so nothing was run." >&2
    exit 2
fi

logs=$(mktemp -d)
echo "== tests marked cuda (python -m pytest -m cuda -q)"
"$PYTHON" -m pytest -m cuda -q 2>&1 | tee "$logs/tests.txt"
tests_rc=${PIPESTATUS[0]}

echo
echo "== bench_peft.py --device cuda, gpt2-medium's shape"
# 3 processes per side by default (5 on CPU) to fit a short GPU session; a later --repeats wins
"$PYTHON" bench_peft.py --device cuda --n_layer 24 --n_head 16 --n_embd 1024 --repeats 3 "$@" \
    2>&1 | tee "$logs/bench.txt"
bench_rc=${PIPESTATUS[0]}

echo
echo "================================ summary ================================"
"$PYTHON" -c 'import torch; print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}")'
if [ "$tests_rc" -eq 0 ]; then tests_word=passed; else tests_word="FAILED (exit $tests_rc)"; fi
echo "cuda tests: $tests_word: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$logs/tests.txt" | tail -n 1)"
grep -E '^(FAILED|ERROR|SKIPPED)' "$logs/tests.txt" | sed 's/^/  /'
if [ "$bench_rc" -eq 0 ]; then
    echo "bench (gpt2-medium shape): ran"
    sed -n '/^machine:/,$p' "$logs/bench.txt"
else
    echo "bench (gpt2-medium shape): FAILED (exit $bench_rc); its last lines:"
    tail -n 15 "$logs/bench.txt" | sed 's/^/  /'
fi
echo "full logs: $logs"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
