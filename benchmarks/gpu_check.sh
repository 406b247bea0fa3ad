#!/usr/bin/env bash
# One call on the GPU machine: build with the test suite, run the suites, then the benchmark.
# Logs go to $OUT (or ./gpu-logs); a short summary is printed last.
#   STAGES      which of: build ctest pytest sanitize bench serve profile ncu prefill ttft (default: build ctest pytest bench)
#   CTEST_ARGS  extra ctest arguments (e.g. -R CudaOps)
#   PYTEST_ARGS extra pytest arguments (e.g. -k cuda)
#   BENCH_ARGS  arguments of benchmarks/gpu_bench.py (e.g. --skip decode prefill)
#   BENCH_ENVS  settings to run the benchmark under, one run each (e.g. "KVINFER_WGMMA_FUSE=1
#               KVINFER_WGMMA_FUSE=0"): an A/B in one machine session
#   PROFILE     "model:batch ..." runs of benchmarks/profile_step.py (stage profile), PROFILE_ENV their
#               environment (e.g. KVINFER_PDL=0: kernel times without dependent launches overlapping)
#   SANITIZE_FILTER, SANITIZE_TIMEOUT  gtest filter and seconds per tool of the sanitize stage
#   NCU_SHAPES  "seq:head_dim:kernel ..." of the ncu stage: a kernel profile (speed of light, warp
#               stall reasons, pipe use; per instruction by benchmarks/ncu_top.py) of the prefill
#               kernel's second call on that shape (kernel sdpa: torch SDPA's kernel, the peer)
#   PREFILL_KERNELS, TTFT_TOKENS  the prefill stage (the prefill gtests, gpu_bench.py's prefill rows,
#               profile_step.py --prefill): KVINFER_PREFILL values to time the first token under
#               (default auto) and the prompt's length (default 2048)
#   TTFT_ENVS  the ttft stage: profile_step.py --prefill ${TTFT_TOKENS:-2048} once per setting (e.g.
#              "KVINFER_PROMPT_MLP=1 KVINFER_PROMPT_MLP=0"), each run twice, alternating: an A/B of the
#              first token's time and split in one machine session (default: KVINFER_PROMPT_GRAPHS=1,
#              the defaults alone)
#   SERVE_SHAPES  benchmark shapes of the serve stage (default Llama-3.2-1B): per shape the engine
#                 loop offline (batch-invariant and not), serve_bench offline with the LLM.generate
#                 baselines, and at 16 requests/s (batch-invariant and not); needs the serve extra
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
source benchmarks/gpu_env.sh
stages=${STAGES:-build ctest pytest bench}
summary=()
run() {  # name, command...
  local name=$1
  shift
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  summary+=("$name: rc=$rc, $((SECONDS - t0)) s: $(tail -n 1 "$out/$name.log")")
  return $rc
}
for stage in $stages; do
  case $stage in
    build) run build python3 -m pip install -q --no-build-isolation --no-deps \
             --config-settings=build-dir=build/gpu --config-settings=cmake.define.KVINFER_BUILD_TESTS=ON . || break ;;
    ctest) run ctest ctest --test-dir build/gpu --output-on-failure --timeout 600 ${CTEST_ARGS:-} ;;
    pytest) run pytest bash -c "cd tests/python && python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} ." ;;
    sanitize)
      for tool in memcheck racecheck; do
        run "sanitize-$tool" timeout "${SANITIZE_TIMEOUT:-300}" compute-sanitizer --tool "$tool" --error-exitcode 1 \
          build/gpu/tests/cpp/kvinfer_tests --gtest_filter="${SANITIZE_FILTER:-CudaOps.*:Shapes/*}"
      done ;;
    bench)
      if [ -z "${BENCH_ENVS:-}" ]; then
        run bench python3 benchmarks/gpu_bench.py --out "$out/bench.md" ${BENCH_ARGS:-}
      else  # one run per setting, e.g. BENCH_ENVS="KVINFER_WGMMA_FUSE=1 KVINFER_WGMMA_FUSE=0" (an A/B)
        for e in $BENCH_ENVS; do
          run "bench-${e//=/-}" env "$e" python3 benchmarks/gpu_bench.py --out "$out/bench-${e//=/-}.md" ${BENCH_ARGS:-}
          cat "$out/bench-${e//=/-}.md"
        done
      fi ;;
    serve)
      for shape in ${SERVE_SHAPES:-Llama-3.2-1B}; do
        for flags in "" "--no-batch-invariant"; do
          run "loop-$shape${flags:+-nbi}" python3 benchmarks/engine_loop.py --shape "$shape" $flags
          grep -A4 "requests at once" "$out/loop-$shape${flags:+-nbi}.log"
          run "serve16-$shape${flags:+-nbi}" python3 benchmarks/serve_bench.py --serve "$shape" --max-batch 64 \
            --num-requests 400 --rate 16 $flags
          grep "^| serve" "$out/serve16-$shape${flags:+-nbi}.log"
        done
        run "serve-$shape" python3 benchmarks/serve_bench.py --serve "$shape" --max-batch 64 --num-requests 1000 --baseline
        grep "^| [sL]" "$out/serve-$shape.log"
      done ;;
    ncu)
      for shape in ${NCU_SHAPES:-16384:128:ws 16384:64:ws_overlap_192}; do  # seq:head_dim:kernel
        IFS=: read -r seq hd kernel <<<"$shape"
        name="ncu-$seq-$hd-$kernel"
        pattern=prefill  # our kernels; SDPA's: the flash / fused attention kernel torch picks
        [ "$kernel" = sdpa ] && pattern='flash|fmha|attention|sdpa'
        run "$name" ncu --clock-control none --kernel-name "regex:$pattern" --launch-skip 1 \
          --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
          --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
          --section SourceCounters --import-source no -o "/tmp/$name" \
          python3 benchmarks/prefill_one.py --seq "$seq" --head-dim "$hd" --kernel "$kernel" --calls 2
        ncu --import "/tmp/$name.ncu-rep" --page details >"$out/$name-details.txt" 2>&1
        ncu --import "/tmp/$name.ncu-rep" --page source --csv --print-source sass >"/tmp/$name.csv" 2>&1
        python3 benchmarks/ncu_top.py "/tmp/$name.csv" >"$out/$name-top.txt" 2>&1
        grep -E "Duration|Throughput|Issue Slots|highest-utilized|Eligible Warps" "$out/$name-details.txt" | head -12
        head -12 "$out/$name-top.txt" | cut -c1-160
      done ;;
    prefill)  # the prefill kernels' tests, their benchmark against SDPA, and a prompt's first token
      run prefill-tests build/gpu/tests/cpp/kvinfer_tests --gtest_filter='*CudaPrefill*:*Rope*:*KVWrite*'
      run prefill-bench python3 benchmarks/gpu_bench.py --skip gemm decode e2e --out "$out/prefill.md"
      grep "^| prefill" "$out/prefill.md" | cut -c1-130
      for kernel in ${PREFILL_KERNELS:-auto}; do  # KVINFER_PREFILL values to time the first token under
        log="ttft-$kernel"
        run "$log" bash -c "cd benchmarks && KVINFER_PREFILL=$kernel python3 profile_step.py --prefill ${TTFT_TOKENS:-2048}"
        grep "^# " "$out/$log.log" | head -3
      done ;;
    ttft)
      for round in 1 2; do
        for e in ${TTFT_ENVS:-KVINFER_PROMPT_GRAPHS=1}; do
          log="ttft-${e//=/-}-$round"
          run "$log" bash -c "cd benchmarks && env $e python3 profile_step.py --prefill ${TTFT_TOKENS:-2048}"
          echo "$e (round $round):"; grep "^# " "$out/$log.log" | head -3
        done
      done ;;
    profile)
      for mb in ${PROFILE:-Llama-3.2-1B:1 SmolLM2-135M:1}; do  # model:batch[:flags of profile_step.py]
        IFS=: read -r model batch flags <<<"$mb"
        log="profile-$model-$batch${flags// /}"
        run "$log" env ${PROFILE_ENV:-} python3 benchmarks/profile_step.py --model "$model" --batch "$batch" $flags
        grep -v "Loading\|it/s" "$out/$log.log" | head -22
      done ;;
  esac
done
[ -f "$out/bench.md" ] && cat "$out/bench.md"
printf '%s\n' "${summary[@]}"
