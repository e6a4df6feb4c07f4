#!/usr/bin/env bash
# GPU check in one run of under 9 minutes: verify (bdia, momentum), the bench at depth 6
# with 1, 3 and 8 parallel seeds in float32 and bf16, and a 4-variant, 3-seed CIFAR-10
# comparison on the JPEG copy for as many epochs as the time left allows.
#
# On the GPU machine (no network, TensorFlow or ml_collections) through the `run` tool:
#   here, once:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux_2_17_x86_64 -d .whl ml_collections==1.1.0
#                mkdir -p .data && cp -r /work/shared/data/cifar10 .data/   # 55 MB of JPEGs
#   then:        run(command="bash scripts/gpu_check.sh", carry=[".whl", ".data"], timeout_s=600)
# $OUT/gpu_check then holds 5 files: summary.tsv (stage, exit status, seconds; verify exits
# 1 on a mismatch, 124/137 is a stage cut by its time limit), gpu_check.log (this output),
# bench.md, results.md (the comparison) and gpu_check.tar.gz (every log, verify JSON, bench
# CSV, the comparison's runs and report; no checkpoints).
# Time plan (--budget, default 510 s): verify and compiling the bench's programs run in
# parallel (at most 40 %), the timed bench reuses them from JAX's disk cache (at most 15 % +
# 13 %), the comparison gets the rest less 25 s, its epochs estimated from the bench.
# CPU test with tiny models:  bash scripts/gpu_check.sh --tiny --budget 1200 --jobs 2
# (2 busy cores: about 20 minutes, nearly all compiling; what does not fit is cut and recorded)
#
# Options (or environment): --results DIR (GPU_CHECK_RESULTS; $OUT/gpu_check if OUT is set,
# else runs/gpu_check), --data DIR (GPU_CHECK_DATA; .data/cifar10), --budget S
# (GPU_CHECK_BUDGET; 510), --jobs N (GPU_CHECK_JOBS; processes at once in the parallel
# phase; nproc), --tiny (GPU_CHECK_TINY=1), --bench-seeds LIST (GPU_CHECK_BENCH_SEEDS;
# 1,3,8); JAX_COMPILATION_CACHE_DIR, if set, is used (default: a fresh one).
# Exit status: 0 when every stage exited 0, else 1; 2 for bad options or no ml_collections.
set -uo pipefail
RESULTS=${GPU_CHECK_RESULTS:-${OUT:+$OUT/gpu_check}} DATA=${GPU_CHECK_DATA:-}
BUDGET=${GPU_CHECK_BUDGET:-510} TINY=${GPU_CHECK_TINY:-0} JOBS=${GPU_CHECK_JOBS:-$(nproc)}
BENCH_SEEDS=${GPU_CHECK_BENCH_SEEDS:-1,3,8} PY=${PYTHON:-python3}
while (($#)); do
  case $1 in
    --tiny) TINY=1; shift; continue ;;
    --results|--data|--budget|--jobs|--bench-seeds)
      (($# > 1)) || { echo "gpu_check: $1 needs a value" >&2; exit 2; } ;;&
    --results) RESULTS=$2 ;;  --data) DATA=$2 ;;  --budget) BUDGET=$2 ;;  --jobs) JOBS=$2 ;;
    --bench-seeds) BENCH_SEEDS=$2 ;;
    *) echo "gpu_check: bad option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
[[ $BUDGET =~ ^[0-9]+$ && $JOBS =~ ^[1-9][0-9]*$ ]] ||
  { echo "gpu_check: --budget and --jobs take whole numbers" >&2; exit 2; }
[[ -n $RESULTS ]] && RESULTS=$(realpath -m "$RESULTS"); [[ -n $DATA ]] && DATA=$(realpath -m "$DATA")
cd "$(dirname "$0")/.." && ROOT=$PWD
RESULTS=${RESULTS:-$ROOT/runs/gpu_check} DATA=${DATA:-$ROOT/.data/cifar10}
mkdir -p "$RESULTS" || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") && mkdir -p "$WORK"/{logs,verify,bench}
SUMMARY=$RESULTS/summary.tsv VARIANTS=vit,revvit,bdia,momentum
rm -f "$RESULTS"/{gpu_check.log,bench.md,results.md,gpu_check.tar.gz}
printf 'stage\texit\tseconds\n' >"$SUMMARY"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
echo "gpu_check: budget ${BUDGET}s, results $RESULTS, work $WORK, data $DATA, tiny=$TINY"

# Settings: the presets, or tiny models for a CPU test of the plumbing.
declare -A BF16=([f32]=False [bf16]=True)
VERIFY=() BENCH=(--depths 6 --batch-sizes 128 --steps 20 --warmup 3) TRAIN=() EXAMPLES=
if [[ $TINY == 1 ]]; then
  MODEL=(--config.model.dim=32 --config.model.heads=2 --config.model.dim_head=16
         --config.model.mlp_dim=64) EXAMPLES=512
  VERIFY=("${MODEL[@]}" --config.model.depth=2 --batch 8)
  BENCH=("${MODEL[@]}" --depths 2 --batch-sizes 128 --steps 2 --warmup 1)
  TRAIN=("${MODEL[@]}" --config.model.depth=2 --config.train_examples=$EXAMPLES --config.eval_examples=256)
fi

# Python path: carried wheels (.whl/*.whl) and the checkout itself (not pip-installed there).
if compgen -G '.whl/*.whl' >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl/*.whl && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! why=$($PY -c 'import ml_collections' 2>&1); then
  get="python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
  get+=" --platform manylinux_2_17_x86_64 -d .whl ml_collections==1.1.0"
  echo "gpu_check: error: cannot import ml_collections ($(tail -n 1 <<<"$why")); carry missing" \
    "packages as wheels in .whl, e.g.: $get (then carry .whl)"
  exit 2
fi
# No preallocation: bench memory per configuration, and several processes share the GPU.
# Compiled programs are cached on disk: the timed bench reuses what phase 1 compiled.
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache} JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

cap() {  # cap PCT RESERVE_PCT: seconds for a stage: PCT % of the budget, leaving RESERVE_PCT %
  local a=$((BUDGET * $1 / 100)) b=$((BUDGET - SECONDS - BUDGET * $2 / 100)); echo $((a < b ? a : b))
}
stage() {  # stage NAME LIMIT_S CMD...: CMD under `timeout`, output in logs/NAME.log, a summary row
  local name=$1 limit=$2 t0=$SECONDS rc; shift 2
  if ((limit < 5)); then rc=skipped; else
    timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1; rc=$?
    ((rc == 124 || rc == 137)) && rc="$rc(timeout ${limit}s)"
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >>"$SUMMARY"
  echo "[$((SECONDS))s] $name: exit $rc, $((SECONDS - t0))s"
  [[ $rc == 0 || $rc == skipped ]] || tail -n 3 "$WORK/logs/$name.log" | sed 's/^/    /'
  [[ $rc == 0 ]]
}
launch() {  # launch NAME END_S CMD...: stage in the background, at most JOBS at once, until END_S
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
  local name=$1 end=$2; shift 2; stage "$name" $((end - SECONDS)) "$@" & PIDS+=($!)
}

# 0. Machine, versions, code.
echo "code: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), vit_jax/*.py sha256" \
  "$(cat vit_jax/*.py | sha256sum | cut -c1-12)"
command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi
timeout 120 $PY - <<'EOF' || echo "gpu_check: jax could not start (exit $?)"
import importlib.metadata as md, sys, jax
names = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'flax', 'optax',
         'orbax-checkpoint', 'ml_collections', 'numpy', 'pillow', 'matplotlib')
def version(n):
  try: return md.version(n)
  except md.PackageNotFoundError: return None
print('python', sys.version.split()[0], '|', ', '.join(f'{n} {version(n)}' for n in names if version(n)))
print('devices:', jax.devices(), '| kind:', jax.devices()[0].device_kind)
EOF

# 1. In parallel (compiling is most of it): verify, and the bench's programs compiled once
#    (1 step each) into the cache. Verify exits 1 on a rebuilt activation that differs.
P1_END=$((SECONDS + $(cap 40 45))) PIDS=()
for v in bdia momentum; do
  for s in f32 bf16 f32_seeds3 bf16_seeds3; do
    f=(); [[ $s == bf16* ]] && f+=(--config.bf16=True)
    [[ $s == *seeds3 ]] && f+=(--config.parallel_seeds=3)
    launch "verify_${v}_$s" $P1_END $PY -m vit_jax.tools.verify --config "configs/${v}_cifar10.py" \
      "${f[@]}" "${VERIFY[@]}" --json "$WORK/verify/${v}_$s.json"
  done
done
for d in f32 bf16; do
  for k in ${BENCH_SEEDS//,/ }; do
    launch "bench_compile_${d}_seeds$k" $P1_END $PY -m vit_jax.tools.bench --variants $VARIANTS \
      "${BENCH[@]}" --steps 1 --warmup 0 --parallel-seeds "$k" --config.bf16="${BF16[$d]}"
  done
done
wait "${PIDS[@]}"  # not a bare `wait`: that would wait for the `tee` above too

# 2. The timed bench, one configuration at a time (programs from the cache: compile_s here
#    is tracing + loading; the bench_compile logs have the compile times, measured in parallel).
for d in f32 bf16; do
  [[ $d == f32 ]] && lim=$(cap 15 30) || lim=$(cap 13 22)
  stage "bench_$d" "$lim" $PY -m vit_jax.tools.bench --variants $VARIANTS "${BENCH[@]}" \
    --parallel-seeds "$BENCH_SEEDS" --config.bf16="${BF16[$d]}" \
    --csv "$WORK/bench/bench_$d.csv" --markdown "$WORK/bench/bench_$d.md"
done

# 3. The comparison, for the epochs that fit (scripts/gpu_check_plan.py: from the float32
#    step and compile times at 3 seeds), so that every run finishes the same epoch count.
LEFT=$((BUDGET - SECONDS - 25))  # kept back: 10 s for `timeout -k`, then a report and the tar
if [[ ! -d $DATA/train ]]; then
  echo "gpu_check: no data set at $DATA (copy /work/shared/data/cifar10 there, carry .data)"
  printf 'compare\tno data\t0\n' >>"$SUMMARY"
else
  EXAMPLES=${EXAMPLES:-$(find "$DATA/train" -type f | wc -l)}
  EPOCHS=$($PY scripts/gpu_check_plan.py --seconds "$LEFT" --examples "$EXAMPLES" --logs \
    "$WORK"/logs/bench_compile_f32_*.log "$WORK/logs/bench_f32.log" 2>"$WORK/logs/plan.log") || EPOCHS=1
  cat "$WORK/logs/plan.log"
  stage "compare_${EPOCHS}_epochs" "$LEFT" $PY -m vit_jax.tools.compare --dataset "folder:$DATA" \
    --variants $VARIANTS --seeds 3 --workdir "$WORK/compare" --config.num_epochs="$EPOCHS" \
    --config.progress_bar=False --config.tensorboard=False --config.checkpoint_every_epochs=0 \
    "${TRAIN[@]}" ||
    { [[ -d $WORK/compare ]] && stage report $((BUDGET - SECONDS - 3)) \
        $PY -m vit_jax.tools.report "$WORK/compare" --out "$WORK/compare/report"; }
fi

# 4. Pack: a few files to read directly, everything else (no checkpoints) in one tar.gz.
for d in f32 bf16; do  # the bench's table, or one from its log's rows when it was cut short
  [[ -f $WORK/logs/bench_$d.log ]] || continue
  if [[ -f $WORK/bench/bench_$d.md ]]; then echo "## $d"; cat "$WORK/bench/bench_$d.md"; else
    echo "## $d (cut short: the rows it printed)"
    $PY -c 'import json, sys; from vit_jax.tools import bench
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(bench.markdown(bench.add_ratios(rows)) if rows else "none")' "$WORK/logs/bench_$d.log"
  fi
done >"$RESULTS/bench.md"
cp "$WORK/compare/report/results.md" "$RESULTS/" 2>/dev/null
tar -czf "$RESULTS/gpu_check.tar.gz" -C "$WORK" --exclude='*checkpoints' --exclude=jax_cache \
  --exclude=site logs verify bench $([[ -d $WORK/compare ]] && echo compare)
printf 'total\t-\t%s\n' $SECONDS >>"$SUMMARY"
echo "gpu_check: done in ${SECONDS}s; $RESULTS:"; ls -l "$RESULTS"; expand -t 32,56 "$SUMMARY"
! cut -f2 "$SUMMARY" | sed 1d | grep -qv '^0$\|^-$'
