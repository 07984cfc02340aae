#!/usr/bin/env bash
# One lease of the lent GPU, prepared (device tool, from the repository root):
#
#     bash bench/gpu_session.sh                      # env tests dwconv step report: at most 8.5 min + GRACE
#                                                    # (device tool: timeout_s 600; the lease also pays the start)
#     bash bench/gpu_session.sh passes tune bnact report   # a second call, if the lease has time left
#
# The device machine has python3 with torch, triton, pytest, pytest-benchmark, einops and attrs, but no FFCV and no
# network, so nothing is installed: deps_kernels and deps_loaders (the kernels/ and loaders/ folders, as setup.py maps
# them) are linked into a folder on PYTHONPATH. Stages run in the order given; each has a time cap after which its
# benchmarks skip the cases not yet started (so pytest still writes the JSON of those that ran; a stage overrunning
# its cap by GRACE=60 s is killed) and a failed stage does not stop the next. Everything lands in $OUT
# (at most 8 files: the device tool returns no more): session.log, ceilings.json, dwconv.json, step-gpu.json,
# dwconv-passes.json, tune.json, dwconv-bn-act.json, report.md. Copy the JSON files to bench/results/ and update bench/RESULTS.md with
# bench/report.py here (report.md is the same tables, to read at once).
#
# Stages (caps in seconds, overridable as CAP_<stage>=N):
#   env     nvidia-smi, versions, bench/ceilings.py (copy bandwidth, bf16 matmul rate)          30
#   tests   pytest -m gpu tests/ (kernels, fused step and trainer, the GPU defaults, bf16 eval,  180
#           CUDA latency; not the fused depthwise layer's, which the bnact stage runs)
#   dwconv  bench/test_bench_dwconv.py, forward+backward, bf16 and fp32, both layouts            150
#   step    bench/test_bench_step.py -m gpu (shrinking step, FM-warmup step, k sweep)            150
#           and bench/test_bench_grad_engine.py -m gpu (torch.func vs autograd.grad) if time is left
#   passes  bench/test_bench_dwconv.py, forward and backward apart, bf16                         150
#   tune    bench/tune_dwconv.py (tile sweep against the current tile rule)                      150
#   bnact   the fused depthwise layer (the stretch goal): its gpu tests, then                    120
#           the shrinking step with it (deps_fused_bn vs deps_fused, which the step stage leaves
#           out) and bench/test_bench_dwconv_bn_act.py, channels_last forward+backward            +150
#   report  bench/report.py on what is there -> report.md                                         30
# DEPS_BENCH_DEVICE=cpu runs the same stages on the CPU at tiny sizes (Triton interpreter) to check this script.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/gpu-session}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LOG="$OUT/session.log"
SMOKE=0
[ "${DEPS_BENCH_DEVICE:-cuda}" != cuda ] && SMOKE=1

log() { printf '[gpu-session %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG"; }

# run CAP NAME CMD...: the command with its output in the log. Benchmarks stop starting new cases at CAP seconds
# (DEPS_BENCH_DEADLINE, bench/conftest.py), so pytest still writes its JSON; a hard stop follows GRACE seconds later.
GRACE="${GRACE:-60}"
run() {
    local cap="$1" name="$2"
    shift 2
    local t0=$SECONDS rc
    log "$name: $* (cap ${cap}s)"
    DEPS_BENCH_DEADLINE=$(($(date +%s) + cap)) timeout -k 10 $((cap + GRACE)) "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    log "$name: exit $rc after $((SECONDS - t0))s$([ "$rc" = 124 ] && echo ' (killed at the hard stop)')"
    return 0
}

cap() { local v="CAP_$1"; echo "${!v:-$2}"; }

SITE="$(mktemp -d "${TMPDIR:-/tmp}/deps-site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT  # on every way out: done, a bad stage name, or the device tool's kill
ln -s "$ROOT/kernels" "$SITE/deps_kernels"
ln -s "$ROOT/loaders" "$SITE/deps_loaders"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE)
BENCH_DEVICE_ARGS=(-m gpu)
[ "$SMOKE" = 1 ] && BENCH_DEVICE_ARGS=(-m "not gpu")

stage_env() {
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true; } | tee -a "$LOG"
    "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
import triton
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__} "
      f"cuda {torch.version.cuda} device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
try:
    import ffcv  # noqa: F401
    print("ffcv: present")
except Exception as err:  # noqa: BLE001
    print(f"ffcv: absent ({type(err).__name__}); the loader GPU test is deselected")
EOF
    if [ "$SMOKE" = 1 ]; then
        run "$(cap env 30)" ceilings "$PY" bench/ceilings.py --device cpu --small --out "$OUT/ceilings.json"
    else
        run "$(cap env 30)" ceilings "$PY" bench/ceilings.py --out "$OUT/ceilings.json"
    fi
}

stage_tests() {
    local deselect=()
    "$PY" -c "import ffcv" >/dev/null 2>&1 ||
        deselect=(--deselect tests/loaders/test_loaders_ffcv.py::test_cuda_loader_matches_the_cpu_loader)
    if [ "$SMOKE" = 1 ]; then  # the CPU stand-in: the kernel tests in the interpreter, the first few only
        run "$(cap tests 180)" tests "${PYTEST[@]}" tests/kernels/test_elastic_dwconv.py -x -k "float32 and k3"
    else
        # the fused depthwise layer's tests (-k bn_act: its module, and its cases of the step and trainer tests) run in
        # the bnact stage: their compiles came first and would take this stage's time
        run "$(cap tests 180)" tests "${PYTEST[@]}" -m gpu tests "${deselect[@]}" -k "not bn_act"
    fi
}

stage_dwconv() {
    run "$(cap dwconv 150)" dwconv "${PYTEST[@]}" bench/test_bench_dwconv.py "${BENCH_DEVICE_ARGS[@]}" --benchmark-only \
        -k "fwd_bwd" --benchmark-json="$OUT/dwconv.json" --benchmark-columns=median,iqr,rounds
}

stage_passes() {
    run "$(cap passes 150)" passes "${PYTEST[@]}" bench/test_bench_dwconv.py "${BENCH_DEVICE_ARGS[@]}" --benchmark-only \
        -k "bf16 and not fwd_bwd" --benchmark-json="$OUT/dwconv-passes.json" --benchmark-columns=median,iqr,rounds
}

stage_step() {
    if [ "$SMOKE" = 1 ]; then  # the CPU rows of the same file: the FM-warmup step, two providers
        run "$(cap step 150)" step "${PYTEST[@]}" bench/test_bench_step.py --benchmark-only \
            -k "fm_warmup and (deps or static)" --benchmark-json="$OUT/step-gpu.json"
    else
        # then, if the cap leaves time, torch.func's gradient against autograd.grad's on the full model (interleaved)
        run "$(cap step 150)" step "${PYTEST[@]}" bench/test_bench_step.py bench/test_bench_grad_engine.py -m gpu \
            --benchmark-only -k "not deps_fused_bn" --benchmark-json="$OUT/step-gpu.json"
    fi
}

stage_bnact() {
    if [ "$SMOKE" = 1 ]; then
        run "$(cap bnact 120)" bnact-tests "${PYTEST[@]}" tests/kernels/test_dwconv_bn_act.py -x -k "float32 and k3"
    else
        run "$(cap bnact 120)" bnact-tests "${PYTEST[@]}" -m gpu tests/kernels -k bn_act
    fi
    # the shrinking step with the fused layer against the step without it (its compiles kept out of the step
    # stage), then the layer alone; one JSON (the device tool returns at most 8 files), reported by subject
    run "$(cap bnact_bench 150)" bnact "${PYTEST[@]}" bench/test_bench_step.py bench/test_bench_dwconv_bn_act.py \
        "${BENCH_DEVICE_ARGS[@]}" --benchmark-only \
        -k "(shrinking_step_gpu and deps_fused) or (test_bench_dwconv_bn_act and channels_last and fwd_bwd)" \
        --benchmark-json="$OUT/dwconv-bn-act.json" --benchmark-columns=median,iqr,rounds
}

stage_tune() {
    local budget=$(($(cap tune 150) - 30))
    local args=(--budget-s "$budget" --out "$OUT/tune.json")
    [ "$SMOKE" = 1 ] && args+=(--smoke)
    run "$(cap tune 150)" tune "$PY" bench/tune_dwconv.py "${args[@]}"
}

stage_report() {
    local report_args=()
    [ -s "$OUT/ceilings.json" ] && report_args=(--ceilings "$OUT/ceilings.json")
    # the SASS model's predicted times (bench/inspect_kernels.py, the device's Triton): measured / predicted columns
    local model="$ROOT/bench/results/inspect-sm90-triton3.6.json"
    [ -s "$model" ] && report_args+=(--predictions "$model")
    : >"$OUT/report.md.tmp"
    for f in ceilings dwconv dwconv-passes step-gpu dwconv-bn-act; do
        [ -s "$OUT/$f.json" ] || continue
        if [ "$f" = ceilings ]; then
            { echo "## ceilings"; echo; echo '```'; cat "$OUT/ceilings.json"; echo '```'; echo; } >>"$OUT/report.md.tmp"
        else
            { echo "## $f"; echo; "$PY" bench/report.py "$OUT/$f.json" "${report_args[@]}" 2>&1; echo; } >>"$OUT/report.md.tmp"
        fi
    done
    if [ -s "$OUT/tune.json" ]; then
        "$PY" - "$OUT/tune.json" >>"$OUT/report.md.tmp" 2>&1 <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("## tune\n\n| kernel | layer | K | layout | default tile | µs | best tile | µs | gain |\n|---|---|---:|---|---|---:|---|---:|---:|")
for r in rows:
    print(f"| {r['kernel']} | {r['layer']} | {r['k']} | {r['layout']} | {tuple(r['default'])} | {r['default_us']} | "
          f"{tuple(r['best'])} | {r['best_us']} | {r['gain']:.2f}× |")
EOF
    fi
    mv "$OUT/report.md.tmp" "$OUT/report.md"
    log "report: $OUT/report.md"
    cat "$OUT/report.md"
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests dwconv step report)
for s in "${STAGES[@]}"; do
    case "$s" in
    env | tests | dwconv | step | passes | tune | bnact | report) ;;
    *) log "unknown stage '$s' (env tests dwconv step passes tune bnact report)"; exit 2 ;;
    esac
done
log "stages: ${STAGES[*]}; out: $OUT$([ "$SMOKE" = 1 ] && echo '; CPU smoke run (Triton interpreter), times mean nothing')"
for s in "${STAGES[@]}"; do
    "stage_$s"
done
log "done in ${SECONDS}s"
