#!/usr/bin/env bash
# The one GPU check of a session: paper-scale BFN train-step throughput on the device machine.
#   run from the repository root on the GPU machine; wheels for missing packages in .whl/
# Prints one line per variant (see benchmarks/bfn_throughput.py) and tees it to $OUT/gpu.log.
set -u
if ls .whl/ml_collections*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/ml_collections*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
LOG=${OUT:-/tmp}/gpu.log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
B="python3 benchmarks/bfn_throughput.py --steps 15 --warmup 3"
timeout 150 $B --variant=text8 --batch_size=64 --dtype=bfloat16 --set model.attention_impl=cudnn 2>&1 | grep -E "variant=|Error|error" | tee -a "$LOG"
timeout 100 $B --variant=cifar10_256d --batch_size=32 --dtype=bfloat16 2>&1 | grep -E "variant=|Error|error" | tee -a "$LOG"
timeout 80 $B --variant=cifar10_256d --batch_size=32 --dtype=float32 2>&1 | grep -E "variant=|Error|error" | tee -a "$LOG"
# BFN against the official PyTorch code, side by side (issue 19 item 1), where the device has torch
# and the checkout travels as the ignored folder .official_bfn/ (run's carry: [".official_bfn"];
# `git -C MIRROR archive HEAD | tar -x -C .official_bfn` from the fetched nnaisense repository).
if [ -f .official_bfn/model.py ] && python3 -c "import torch, yaml" >/dev/null 2>&1; then
  for DTYPE in float32 bfloat16; do
    timeout 200 python3 benchmarks/bfn_vs_official.py --official .official_bfn --rounds 1 --steps 10 \
      --warmup 3 --dtype $DTYPE --batch mnist=64,cifar10=32,text8=32 \
      --out=${OUT:-/tmp}/bfn_vs_official_$DTYPE.json 2>&1 | grep -E "^[|]|^20|Error|error|failed" | tee -a "$LOG"
  done
fi
# The one runner on the device's JAX (0.11.x, Python 3.12): the template method trains, evaluates
# and samples through experiments.main.
for MODE in train eval sample; do
  timeout 60 python3 -m experiments.main --config=configs/example.py:smoke --workdir=/tmp/gpu_example \
    --mode=$MODE 2>&1 | tail -1 | sed "s/^/example $MODE: /" | tee -a "$LOG"
done
# ACN: train step against the VAE at 60k and 1M codes, and the exact search against table size;
# then the smoke variant through the runner (shard_map on the device's JAX).
timeout 150 python3 benchmarks/acn_search.py --steps 15 --out=${OUT:-/tmp}/acn_search.json 2>&1 \
  | grep -E "^[|]|^target|^device|Error|error" | tee -a "$LOG"
for MODE in train eval sample; do
  timeout 60 python3 -m experiments.main --config=configs/acn.py:smoke --workdir=/tmp/gpu_acn \
    --mode=$MODE 2>&1 | tail -1 | sed "s/^/acn $MODE: /" | tee -a "$LOG"
done
# Kanerva Machine: memory write/read/KL against memory size and episode length, and the train step
# against the VAE's with the same networks.
timeout 180 python3 benchmarks/kanerva_cost.py --steps 15 --out=${OUT:-/tmp}/kanerva_cost.json 2>&1 \
  | grep -E "^[|]|^ratio|^device|Error|error" | tee -a "$LOG"
# Curriculum (Exp3.S): every signal's fused step against a uniform-sampling step at the paper's
# repeat copy size (169 tasks, 184 steps, LSTM of 512, batch 32), then the smoke variant through
# the runner.
timeout 240 python3 benchmarks/curriculum_cost.py --config repeat_copy --steps 30 --repeats 3 \
  --out=${OUT:-/tmp}/curriculum_cost.json 2>&1 | grep -E "^[|]|Error|error" | tee -a "$LOG"
for MODE in train eval sample; do
  timeout 60 python3 -m experiments.main --config=configs/curriculum.py:smoke --workdir=/tmp/gpu_cur \
    --mode=$MODE 2>&1 | tail -1 | sed "s/^/curriculum $MODE: /" | tee -a "$LOG"
done
# ByteNet: cached decoding's time per character from position 100 to 10,000 and cached against
# naive at length 1,000 (the paper's 30 MU blocks of d = 512, batch 1), and training throughput
# against a causal transformer of the same parameter count (16 windows of 500 bytes); then the
# smoke variant through the runner (its bytes: the Wikipedia excerpt inside the gensim wheel,
# unpacked from .whl/ where the device has no gensim; only its data file is read).
if ! python3 -c "import importlib.util as u; assert u.find_spec('gensim')" >/dev/null 2>&1 \
  && ls .whl/gensim*.whl >/dev/null 2>&1; then
  python3 -m zipfile -e "$(ls .whl/gensim*.whl | head -1)" /tmp/site \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout 150 python3 benchmarks/bytenet_decoding.py --config enwik8 \
  --out=${OUT:-/tmp}/bytenet_decoding.json 2>&1 | grep -E "^[|]|^target|^device|Error|error" | tee -a "$LOG"
timeout 150 python3 benchmarks/bytenet_throughput.py --config enwik8 --batch_size 16 --steps 10 \
  --repeats 3 --out=${OUT:-/tmp}/bytenet_throughput.json 2>&1 \
  | grep -E "^[|]|^ratio|^parameters|^device|Error|error" | tee -a "$LOG"
for MODE in train eval sample; do
  timeout 90 python3 -m experiments.main --config=configs/bytenet.py:smoke --workdir=/tmp/gpu_bytenet \
    --mode=$MODE 2>&1 | tail -1 | sed "s/^/bytenet $MODE: /" | tee -a "$LOG"
done
# VPN: training frames per second at the paper's sizes (64 x 64, 20 frames, batch 64) and one
# generated 64 x 64 frame, cached against naive (the naive decoder timed on its first 256 pixels
# and scaled: every naive pixel step reruns the whole frame); then the smoke variant through the
# runner.
timeout 200 python3 benchmarks/vpn_speed.py --config moving_mnist --batch 16 --naive_pixels 256 \
  --out=${OUT:-/tmp}/vpn_speed.json 2>&1 | grep -E "^[|]|^target|^device|Error|error" | tee -a "$LOG"
for MODE in train eval sample; do
  timeout 60 python3 -m experiments.main --config=configs/vpn.py:smoke --workdir=/tmp/gpu_vpn \
    --mode=$MODE 2>&1 | tail -1 | sed "s/^/vpn $MODE: /" | tee -a "$LOG"
done
# Parallel WaveNet at the paper's sizes: the teacher's cached against naive step (receptive field
# 6,139), cached generation, and the student's parallel sampling (target: 2M samples/s on one
# H100 at batch 16); then the teacher's smoke variant through the runner (on the embedded
# utterance, which needs the pysptk sdist in the venv's share/deepgen/sdists).
timeout 240 python3 benchmarks/parallel_wavenet_speed.py --batch 16 \
  --out=${OUT:-/tmp}/parallel_wavenet_speed.json 2>&1 | grep -E "^[|]|^targets|^device|Error|error" | tee -a "$LOG"
# SAM (Rae et al. 2016, Fig. 1) at the paper's sizes (LSTM 100, M = 32, R = K = 4, batch 8, T =
# 100): one forward and backward pass against N = 1e3 .. 1e6, the dense NTM and DAM (extrapolated
# past the memory budget) against SAM with the exact and blocked device searches (the host index
# and the PyTorch peer are CPU-only), and the compiled temp bytes against T.
timeout 300 python3 benchmarks/sam_scaling.py --labels ntm,dam,sam_exact,sam_blocked --memory_batch 8 \
  --dense_extra 2e4 --step_sweep 10,100,200 --repeats 3 --time_budget 20 --max_call_s 20 --no_forward \
  --memory_budget_gb 60 --out=${OUT:-/tmp}/sam_scaling.json 2>&1 | grep -E "^[|]|^target|^device|Error|error" | tee -a "$LOG"
