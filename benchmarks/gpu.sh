#!/usr/bin/env bash
# The README's GPU measurements in one command, for a GPU lent for a short time.
#
#     bash benchmarks/gpu.sh OUT [SECONDS]
#
# In order: the CUDA tests (tests/test_cuda.py), benchmarks/run.py --quick --device cuda and benchmarks/srdrn_speed.py
# --device cuda (each ratio measured in the same run), then the downstream experiments of the synthetic benchmark and
# the Fraser basin side by side (benchmarks/downstream.sh: data, generator, samples, 40 runs each) until SECONDS after
# the start (default 540), when they are stopped: finished runs are kept, and `downstream.sh` skips them when run again
# on the same work directory. Logs, JSON and each experiment's report (<name>_experiment.md and .json) go to OUT, the
# datasets, generators and experiments to WORK/synthetic and WORK/fraser (WORK: OUT; a generator with its samples
# already in WORK/<name>/generator, e.g. made on a CPU with downstream.sh's UNTIL=samples and carried, is used as it is;
# GENERATORS: a folder whose <name>/generator is copied there first when WORK has none, so that a carried generator can
# seed a WORK outside the checkout, e.g. /tmp/work, which a lent machine keeps between calls), and the finished runs to
# OUT/<name>_runs.tgz. Environment: SHARED (../shared/data beside the checkout), DATASETS (the experiments run:
# "synthetic fraser"), JOBS_SYNTHETIC (8), JOBS_FRASER (4 beside the synthetic benchmark, 16 alone), RECIPE_EXTRA
# (experiment overrides added to both, e.g. "experiment.channels_last=true"), DEVICE (cuda), STAGES (tests bench speed
# experiments: any of them, in this order), BENCH_ARGS (run.py's projection and compile mode: "--batch auto --epoch-days
# 1000 --compile reduce-overhead --projection-compile reduce-overhead").
set -uo pipefail
out=${1:?output directory}
seconds=${2:-540}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${WORK:-$out}
device=${DEVICE:-cuda}
start=$(date +%s)
left() { local s=$((seconds - ($(date +%s) - start))); echo $((s > 1 ? s : 1)); }
stages=${STAGES:-tests bench speed experiments}
cd "$here"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
case " $stages " in *" tests "*)
  timeout "$(left)" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/cuda_tests.txt" 2>&1
  echo "[$(($(date +%s) - start)) s] CUDA tests: $(tail -1 "$out/cuda_tests.txt")" ;;
esac
case " $stages " in *" bench "*)
  bench_args=${BENCH_ARGS:---batch auto --epoch-days 1000 --compile reduce-overhead --projection-compile reduce-overhead}
  timeout "$(left)" python3 benchmarks/run.py --quick --device "$device" $bench_args \
    --json "$out/benchmark_cuda.json" > "$out/benchmark_cuda.txt" 2>&1
  echo "[$(($(date +%s) - start)) s] benchmarks/run.py: $(tail -1 "$out/benchmark_cuda.txt")" ;;
esac
case " $stages " in *" speed "*)
  timeout "$(left)" python3 benchmarks/srdrn_speed.py --device "$device" --json "$out/srdrn_speed.json" \
    > "$out/srdrn_speed.txt" 2>&1
  echo "[$(($(date +%s) - start)) s] benchmarks/srdrn_speed.py: $(tail -1 "$out/srdrn_speed.txt")" ;;
esac
case " $stages " in *" experiments "*)
  base="experiment.batch_size=64 experiment.lr=0.003 experiment.ema_warmup=true experiment.schedule=cosine"
  datasets=$(echo ${DATASETS:-synthetic fraser})  # the names, one space apart
  for name in $datasets; do
    if [ -n "${GENERATORS:-}" ] && [ -d "$GENERATORS/$name/generator" ] && [ ! -e "$work/$name/generator" ]; then
      mkdir -p "$work/$name" && cp -r "$GENERATORS/$name/generator" "$work/$name/"
    fi
    jobs=JOBS_${name^^}
    # Fraser alone: 16 runs at once finished 0.068 runs/s on an H100, 12 at once 0.065 (README)
    if [ "$name" = synthetic ]; then default_jobs=8; elif [ "$datasets" = fraser ]; then default_jobs=16
    else default_jobs=4; fi
    DEVICE=$device JOBS=${!jobs:-$default_jobs} RECIPE="$base ${RECIPE_EXTRA:-}" \
      timeout -k 10 "$(left)" bash benchmarks/downstream.sh "$name" "$work/$name" > "$out/$name.log" 2>&1 &
  done
  while [ "$(jobs -r | wc -l)" -gt 0 ] && [ "$(left)" -gt 1 ]; do
    sleep 30
    echo "[$(($(date +%s) - start)) s] runs finished: $(for name in $datasets; do
      echo -n "$name $(ls "$work/$name"/experiment/runs/*_seed?.json 2>/dev/null | wc -l) "; done)"
  done
  wait
  for name in $datasets; do  # the reports come back with OUT (WORK may stay on the machine)
    for f in experiment.md experiment.json; do
      [ -f "$work/$name/experiment/$f" ] && cp "$work/$name/experiment/$f" "$out/${name}_$f"
    done
    # the finished runs too (scores, settings, cost and map of each), also when the deadline stopped the rest
    [ -d "$work/$name/experiment/runs" ] && tar czf "$out/${name}_runs.tgz" -C "$work/$name/experiment" runs
  done ;;
esac
echo "[$(($(date +%s) - start)) s] done; results in $out"
