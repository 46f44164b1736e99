#!/usr/bin/env bash
# Runs infinihip's CUDA tests, CLI checks and timings on the lent GPU machine, from binaries
# built on the dev machine (docs/CUDA.md says how to prepare the folder and send it).
#
#   cuda_device_run.sh STEP...   (STEP: probe, ops, model, cli, e2e, ncu-prefill, passkey, attention,
#                                 ncu-decode, ncu-hip)
#
# The folder holding this script holds bin/ (stripped test binaries: cuda_unit, gpu_ops,
# gpu_hip, gpu_model; and infinihip), sdpa_baseline.py, and model/part-* (the default model split in two; the other part
# was copied to /tmp/models by an earlier call while the machine stayed warm). Output goes to
# stdout and to $OUT/<step>.log.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/bin
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/models
export INFINIHIP_REQUIRE_CUDA=1 XDG_CACHE_HOME=/tmp/cache

# The CUDA libraries and headers: the loader path and /usr/local/cuda first, then the pip
# wheels of the machine's python (nvidia/cu13/{lib,include} or nvidia/<pkg>/{lib,include}).
py_nvidia=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
for lib in libcuda.so.1 libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do
  ldconfig -p | grep -q "$lib" && continue
  for d in /usr/local/cuda/lib64 ${py_nvidia:+$py_nvidia/cu13/lib $py_nvidia/*/lib}; do
    if [ -e "$d/$lib" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
  done
done
if [ ! -e /usr/local/cuda/include/cuda_bf16.h ]; then
  for d in ${py_nvidia:+$py_nvidia/cu13 $py_nvidia/cuda_runtime}; do
    if [ -e "$d/include/cuda_bf16.h" ]; then export CUDA_HOME=$d; break; fi
  done
fi

run() { # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee -a "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

model=/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
for step in "$@"; do
  case $step in
    probe)
      {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} CUDA_HOME=${CUDA_HOME:-}"
        ls -d /usr/local/cuda* 2>&1; ls /usr/local/cuda/include/cuda_bf16.h 2>&1
        echo "python nvidia packages: $py_nvidia"; ls "$py_nvidia" 2>&1 | tr '\n' ' '; echo
        ls "$py_nvidia"/cu13/include/cuda_bf16.h "$py_nvidia"/cuda_runtime/include/cuda_bf16.h 2>&1
        ldconfig -p | grep -E 'libcuda\.so|libnvrtc\.so|libcublas(Lt)?\.so' ; nvcc --version | tail -2
      } 2>&1 | tee "$out/probe.log" ;;
    ops)
      run ops "$bin/cuda_unit"
      run ops "$bin/gpu_ops" --nocapture
      run ops "$bin/gpu_hip" --nocapture ;;
    model)
      if [ ! -e "$model" ]; then cat /tmp/models/part-* "$here"/model/part-* > "$model"; fi
      sha256sum "$model"
      INFINIHIP_MODEL=$model run model "$bin/gpu_model" --nocapture --test-threads 1 ;;
    cli)
      run cli "$bin/infinihip" run "What is the capital of France?" --temperature 0 --device cuda -m "$model"
      run cli "$bin/infinihip" run "What is the capital of France?" --temperature 0 --device auto -m "$model" -n 16
      run cli "$bin/infinihip" run "What is the capital of France?" --temperature 0 --device cuda --attention hip -m "$model" -n 16
      run cli "$bin/infinihip" bench cpu --device cuda -m "$model" --prompt-tokens 512 --gen-tokens 128 --reps 3 --json "$out/bench-cuda.json" ;;
    e2e)
      # The whole model against context length; E2E_ARGS narrows it (e.g. "--lengths 8k,32k").
      if [ ! -e "$model" ]; then cat /tmp/models/part-* "$here"/model/part-* > "$model"; fi
      run e2e "$bin/infinihip" bench e2e --device cuda -m "$model" ${E2E_ARGS:-} --json "$out/e2e.json" ;;
    ncu-prefill)
      # Where a HiP prefill step's time goes: every kernel of one 4096-token step at 16K-20K
      # tokens of context (the fifth step of a 32K prompt), summed by kernel.
      if [ ! -e "$model" ]; then cat /tmp/models/part-* "$here"/model/part-* > "$model"; fi
      ncu --csv --metrics gpu__time_duration.sum --launch-skip "${NCU_SKIP:-2600}" --launch-count "${NCU_COUNT:-700}" \
        "$bin/infinihip" bench cpu --device cuda --attention hip -m "$model" --prompt-tokens 32768 --gen-tokens 0 \
        --reps 1 > "$out/ncu-prefill.csv" 2> "$out/ncu-prefill.err"
      python3 "$here/ncu_summary.py" "$out/ncu-prefill.csv" | tee "$out/ncu-prefill.txt" ;;
    passkey)
      # HiP passkey on the GPU; PASSKEY_LENGTHS / PASSKEY_TRIALS narrow it.
      if [ ! -e "$model" ]; then cat /tmp/models/part-* "$here"/model/part-* > "$model"; fi
      run passkey "$bin/infinihip" eval passkey --device cuda --attention hip --lengths "${PASSKEY_LENGTHS:-32k}" \
        --trials "${PASSKEY_TRIALS:-10}" -m "$model" --json "$out/passkey-hip-gpu.json" --plot "$out/passkey-hip-gpu.svg" ;;
    attention)
      # External dense baselines first (PyTorch SDPA), then ours, merged into one report.
      # BENCH_ARGS narrows the sweep for both (e.g. "--contexts 32k,1m --batches 1").
      PYTHONUNBUFFERED=1 run attention python3 "$here/sdpa_baseline.py" ${BENCH_ARGS:-} --json "$out/sdpa.json"
      run attention "$bin/infinihip" bench attention ${BENCH_ARGS:-} --merge "$out/sdpa.json" \
        --json "$out/attention.json" --plot "$out/attention.svg" ;;
    ncu-decode)
      # Nsight Compute on the timed launches of the decode kernel (dense, Llama-3.1-8B shapes,
      # 1M keys, batch 1): throughput, occupancy and warp stall reasons.
      run ncu ncu --kernel-name regex:decode_partial --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
        "$bin/infinihip" bench attention --contexts 1m --batches 1 --shapes llama8b --prefill-queries 0 \
        --hip-presets= --reps 2 --warmup 1 ;;
    ncu-hip)
      # The duration of every kernel of HiP decode (Llama-3.1-8B shapes, 1M keys, batch 1,
      # preset flash: each step kind once), one ncu pass each.
      run ncu ncu --metrics gpu__time_duration.sum --kernel-name regex:'decode_partial|attn_combine|hip_' \
        "$bin/infinihip" bench attention --contexts 1m --batches 1 --shapes llama8b --prefill-queries 0 \
        --hip-presets flash --reps 1 --warmup 0 ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
