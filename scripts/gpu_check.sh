#!/usr/bin/env bash
# The one script run on the GPU machine, from the repository root, against binaries built on the
# development machine (CUDA 13.0, cuDNN 9.19 headers) and carried in $DSMIL_CARRY (default
# build-cuda-carry/, made by scripts/gpu_check.sh --pack on the development machine).
#
# Steps: environment (GPU, driver, the cuDNN actually loaded), the GPU tests (every CUDA op against its
# CPU twin), then where present the PyTorch parity check (tools/torch_twin/run.sh, given DSMIL_BIN) and
# the benchmark (`dsmil bench`). Full logs go to $OUT (or ./gpu-check-logs); the last lines printed are
# the worst errors and a pass/fail table.
set -u

repo_root=$(cd "$(dirname "$0")/.." && pwd)
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}

if [ "${1:-}" = "--pack" ]; then
  # Development machine: copy what the GPU machine needs into the carry folder (git-ignored).
  build=${2:-$repo_root/build-cuda}
  mkdir -p "$carry"
  cp "$build/tests/gpu/test_gpu" "$build/tests/gpu/test_gpu_kernel_variants" "$carry/"
  [ -x "$build/dsmil" ] && cp "$build/dsmil" "$carry/"
  [ -f "$build/tools/host_time/libhost_time.so" ] && cp "$build/tools/host_time/libhost_time.so" "$carry/"
  [ -x "$build/tools/conv_fusion_probe/conv_fusion_probe" ] && cp "$build/tools/conv_fusion_probe/conv_fusion_probe" "$carry/"
  du -sh "$carry"
  exit 0
fi

logs=${OUT:-$repo_root/gpu-check-logs}
mkdir -p "$logs"
declare -a step_names step_results

record() { step_names+=("$1"); step_results+=("$2"); }

source "$repo_root/scripts/gpu_env.sh"
if [ -n "$cudnn_found" ]; then record "cuDNN 9.19 from PyTorch's env" "found: $cudnn_found"
else record "cuDNN 9.19 from PyTorch's env" "FAIL: not found, the system cuDNN will load"; fi

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 -c 'import torch; print("PyTorch", torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>&1 | sed 's/^/torch: /'
ldd "$carry/test_gpu" | grep -E "cudnn|cublas|cudart|not found" | sed 's/^/ldd: /'
if [ -x "$carry/dsmil" ]; then
  if "$carry/dsmil" --help > "$logs/dsmil_help.log" 2>&1; then record "dsmil binary starts" "PASS"
  else record "dsmil binary starts" "FAIL: $(head -c 300 "$logs/dsmil_help.log")"; fi
fi

echo "== GPU tests"
if [ -x "$carry/test_gpu" ]; then
  start=$(date +%s)
  "$carry/test_gpu" --test-case='*environment*' 2>&1 | tee "$logs/gpu_environment.log" | grep -E "gpu-env|FAIL|ERROR"
  "$carry/test_gpu" --test-case-exclude='*environment*' > "$logs/gpu_tests.log" 2>&1
  status=$?
  elapsed=$(( $(date +%s) - start ))
  grep -E "^\[gpu-check\]|^\[test\]" "$logs/gpu_tests.log" > "$logs/gpu_checks.txt"
  checks=$(grep -c " PASS$\| FAIL$" "$logs/gpu_checks.txt")
  failed=$(grep -c " FAIL$" "$logs/gpu_checks.txt")
  summary=$(grep "test cases:" "$logs/gpu_tests.log" | sed 's/\[doctest\] //')
  if [ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$checks" -gt 0 ]; then
    record "GPU tests (${elapsed}s)" "PASS: $checks comparisons; $summary"
  else
    record "GPU tests (${elapsed}s)" "FAIL: $failed of $checks comparisons failed, exit $status; $summary"
    echo "-- failures (doctest):"
    grep -B2 -A8 "ERROR\|FAILED\|exception" "$logs/gpu_tests.log" | head -80
  fi
else
  record "GPU tests" "FAIL: $carry/test_gpu missing (run scripts/gpu_check.sh --pack here first)"
fi

echo "== plain kernel variants against their CPU twins"
if [ -x "$carry/test_gpu_kernel_variants" ]; then
  if "$carry/test_gpu_kernel_variants" > "$logs/gpu_kernel_variants.log" 2>&1; then
    record "plain kernel variants" "PASS: $(grep 'test cases:' "$logs/gpu_kernel_variants.log" | sed 's/\[doctest\] //')"
  else
    record "plain kernel variants" "FAIL (log: gpu_kernel_variants.log)"
    grep -B2 -A8 "ERROR\|FAILED" "$logs/gpu_kernel_variants.log" | head -40
  fi
  grep -h "\[gpu-check\]" "$logs/gpu_kernel_variants.log" >> "$logs/gpu_checks.txt"
fi

# Conv tests are left out (cuDNN is slow under the sanitizer). Failed CUDA API calls are not reported: the tests
# check every call themselves, and some make calls fail on purpose (the check macros' test; a step recorded as a
# CUDA graph that the capture refuses), which the sanitizer would count as errors.
echo "== compute-sanitizer memcheck of the hand-written kernels"
if [ -x "$carry/test_gpu" ] && command -v compute-sanitizer > /dev/null && [ "${DSMIL_SKIP_MEMCHECK:-0}" != 1 ]; then
  if timeout 300 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$carry/test_gpu" \
       --test-case-exclude='*conv3d*,*environment*' > "$logs/memcheck.log" 2>&1; then
    record "memcheck (kernels)" "PASS: $(grep -c 'ERROR SUMMARY: 0 errors' "$logs/memcheck.log") clean summary"
  else
    record "memcheck (kernels)" "FAIL (exit $?; log: memcheck.log)"
    grep -m 20 -E "Invalid|ERROR SUMMARY|Address|at 0x|by thread" "$logs/memcheck.log"
  fi
else
  record "memcheck (kernels)" "not run: DSMIL_SKIP_MEMCHECK=1, no compute-sanitizer or no test binary"
fi

echo "== PyTorch parity"
if [ -x "$repo_root/tools/torch_twin/run.sh" ] && [ -x "$carry/dsmil" ]; then
  if DSMIL_BIN="$carry/dsmil" "$repo_root/tools/torch_twin/run.sh" > "$logs/torch_parity.log" 2>&1; then
    record "PyTorch parity" "PASS (log: torch_parity.log)"
  else
    record "PyTorch parity" "FAIL (log: torch_parity.log)"
  fi
  tail -20 "$logs/torch_parity.log"
else
  record "PyTorch parity" "not run: tools/torch_twin/run.sh or the dsmil binary is not there yet"
fi

echo "== benchmark (dsmil vs the PyTorch twin, same shapes, same GPU)"
if [ -x "$carry/dsmil" ] && [ "${DSMIL_SKIP_BENCH:-0}" != 1 ]; then
  if "$repo_root/scripts/gpu_bench.sh" "$carry" "$logs" "${DSMIL_BENCH_RUNS:-3}" > "$logs/bench.log" 2>&1; then
    record "benchmark" "ran (table below; log: bench.log)"
    record "real model, 25 steps fp32" "$(grep -h '^loss:' "$logs"/bench_dsmil_fp32_1.log)"
    record "real model, 25 steps bf16" "$(grep -h '^loss:' "$logs"/bench_dsmil_bf16_1.log)"
  else
    record "benchmark" "FAIL (log: bench.log)"
  fi
else
  record "benchmark" "not run"
fi

echo "== device memory through one step's backward pass (dsmil bench --memory-timeline)"
if [ -x "$carry/dsmil" ] && [ "${DSMIL_SKIP_BENCH:-0}" != 1 ]; then
  for precision in bf16 fp32; do
    "$carry/dsmil" bench --bags 2 --instances 32 --slab 4 --size 128 --width 64 --depth 18 --set model.topk=3 \
        --set run.precision=$precision --steps 3 --warmup 3 --memory-timeline > "$logs/memory_timeline_$precision.log" 2>&1 \
      && record "memory timeline $precision" "$(grep -A1 '^memory timeline' "$logs/memory_timeline_$precision.log" | tr -s ' ' | tr '\n' ' ')" \
      || record "memory timeline $precision" "FAIL (memory_timeline_$precision.log)"
  done
fi

echo "== kernel bench (every hand-written kernel alone, checked and timed)"
if [ -x "$carry/dsmil" ] && [ "${DSMIL_SKIP_KERNEL_BENCH:-0}" != 1 ]; then
  if "$carry/dsmil" bench --kernel all --variant both --json-out "$logs/kernels.json" > "$logs/kernel_bench.log" 2>&1; then
    record "kernel bench" "PASS: every check within tolerance (table: kernel_bench.log)"
  else
    record "kernel bench" "FAIL (log: kernel_bench.log)"
  fi
fi

echo "== Nsight Compute on the kernels below 60% of the copy bandwidth (why: bound, occupancy)"
if command -v ncu > /dev/null && [ -x "$carry/dsmil" ] && [ "${DSMIL_SKIP_PROFILE:-0}" != 1 ] &&
   [ "${DSMIL_SKIP_KERNEL_NCU:-0}" != 1 ]; then
  : > "$logs/kernel_ncu.log"
  # NAME or NAME:DTYPE (bf16 when none is given).
  for entry in ${DSMIL_NCU_KERNELS:-batchnorm_statistics batchnorm_backward batchnorm_relu_backward maxpool3d_backward sum_squares sum_squares:f32 all_finite:f32 batchnorm_forward_eval convert_bf16_to_f32 multi_tensor_adamw:f32}; do
    kernel=${entry%%:*}
    dtype=bf16
    [ "$entry" != "$kernel" ] && dtype=${entry#*:}
    echo "#### $kernel $dtype" >> "$logs/kernel_ncu.log"
    timeout 120 ncu --clock-control none --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
      "$carry/dsmil" bench --kernel "$kernel" --dtype "$dtype" --variant fast --reps 1 --warmup 0 >> "$logs/kernel_ncu.log" 2>&1 \
      || echo "#### ncu failed for $kernel $dtype" >> "$logs/kernel_ncu.log"
  done
  record "ncu of the slow kernels" "ran (kernel_ncu.log)"
fi

echo "== one training step under Nsight Compute (kernel durations; the step's wall time from the benchmark)"
if command -v ncu > /dev/null && [ -x "$carry/dsmil" ] && [ "${DSMIL_SKIP_PROFILE:-0}" != 1 ]; then
  for precision in fp32 bf16; do
    step_ms=$(grep -h "^train step: median" "$logs"/bench_dsmil_${precision}_[0-9]*.log 2>/dev/null | awk '{print $4}' | sort -g | head -1)
    if timeout 300 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
         --print-units base --print-kernel-base function "$carry/dsmil" bench --bags 2 --instances 32 --slab 4 \
         --size 128 --width 64 --depth 18 --set model.topk=3 --set run.precision=$precision --steps 3 --warmup 3 \
         --profile > "$logs/step_profile_$precision.csv" 2> "$logs/step_profile_$precision.err" &&
       python3 "$repo_root/scripts/profile_step.py" "$logs/step_profile_$precision.csv" "${step_ms:-0}" \
         > "$logs/step_profile_$precision.md"; then
      record "step profile $precision" "ran (step_profile_$precision.md)"
    else
      record "step profile $precision" "FAIL (step_profile_$precision.err)"
      tail -5 "$logs/step_profile_$precision.err"
    fi
  done
fi

echo
echo "== worst GPU-test errors, relative to tolerance (err / tol; 1.0 = at the limit)"
if [ -s "$logs/gpu_checks.txt" ]; then
  awk '/ err / { for (i = 1; i <= NF; ++i) { if ($i == "err") e = $(i + 1); if ($i == "tol") t = $(i + 1) }
                 name = $0; sub(/^\[gpu-check\] /, "", name); sub(/ +err .*/, "", name);
                 printf "%8.3f  %-62s err %s tol %s %s\n", (e == "inf" || e == "nan") ? 1e9 : e / t, name, e, t, $NF }' \
    "$logs/gpu_checks.txt" | sort -g -r | head -15
  grep " FAIL$" "$logs/gpu_checks.txt" | grep -v " err " | head -10
fi
echo
for precision in fp32 bf16; do
  [ -s "$logs/step_profile_$precision.md" ] && { echo "== step profile, $precision"; head -16 "$logs/step_profile_$precision.md"; }
done
echo "== kernel bench table"
echo "kernel var type median_us %copy bound (whole table: kernel_bench.log)"
grep -E "^[a-z_0-9]+ +(fast|plain) " "$logs/kernel_bench.log" 2>/dev/null | awk '{print $1, $2, $3, $6, $9, $11}' | head -80
echo "== benchmark table"
grep -A 20 "^side " "$logs/bench.log" 2>/dev/null
echo
echo "== gpu_check summary"
for i in "${!step_names[@]}"; do printf "%-34s %s\n" "${step_names[$i]}" "${step_results[$i]}"; done
for result in "${step_results[@]}"; do case "$result" in FAIL*) exit 1 ;; esac; done
exit 0
