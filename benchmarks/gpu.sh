#!/usr/bin/env bash
# The checks and benchmarks run on a GPU machine (figures in docs/benchmarks.md, "On a GPU").
#
#   bash benchmarks/gpu.sh OUT_DIR
#
# Run from the repository root with knowtune importable (installed, or PYTHONPATH=src) and the
# shared EntityQuestions data beside the repository (tests/conftest.py). Each step is
# time-boxed and writes its output to OUT_DIR; a failing step does not stop the next.
#  1. the architecture matrix (audit engine and training) on CUDA in float32: every family's
#     audit answers equal batch-1 `generate`, the expected decoding path is chosen, and SFT,
#     self-distillation, freezing and LoRA run;
#  2. benchmarks/annotate.py on the default model, float32 (wall-clock ratios on a GPU);
#  3. the same on a random-initialised 1.1B-parameter Llama in bfloat16 (the speed of the
#     engine on a model whose forward pass is the cost; its answers are noise, so lazy
#     mode samples every prompt);
#  4. benchmarks/selfdistill.py on CUDA;
#  5. the 1.1B Llama audited in float32 (greedy agreement of every path with batch-1 `generate`
#     on a model of real size);
#  6. benchmarks/train_vs_trl.py (when TRL is importable) on the default model and the 1.1B Llama.
# STEPS="families annotate llama selfdistill llama-fp32 trl" (the default) picks steps.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python3}
steps=" ${STEPS:-families annotate llama selfdistill llama-fp32 trl} "
want() { [[ $steps == *" $1 "* ]]; }
big_llama() {
    [ -d /tmp/llama-1b ] || $python - <<'EOF'
from knowtune.testing import tiny_family_model
directory = tiny_family_model("llama", "/tmp/llama-1b", initializer_range=0.02, hidden_size=2048, intermediate_size=5632,
                              num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
print(directory)
EOF
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/machine.txt"

want families && KNOWTUNE_TEST_DEVICE=cuda timeout 200 $python -m pytest -q -p no:cacheprovider \
    tests/slick/test_engine_families.py tests/train/test_family_matrix.py ${EXTRA_TESTS:-} 2>&1 | tail -25 | tee "$out/families.txt"

want annotate && timeout 150 $python benchmarks/annotate.py --device cuda --examples 100 2>&1 | tee "$out/annotate_default.txt"

want llama && { big_llama; timeout 200 $python benchmarks/annotate.py --device cuda --dtype bfloat16 --model /tmp/llama-1b \
    --examples 12; } 2>&1 | tee "$out/llama-1b.txt"

want selfdistill && timeout 120 $python benchmarks/selfdistill.py --device cuda --rounds 1 2>&1 | tee "$out/selfdistill.txt"

want llama-fp32 && { big_llama; timeout 150 $python benchmarks/annotate.py --device cuda --dtype float32 --model /tmp/llama-1b \
    --examples 6; } 2>&1 | tee "$out/llama-1b-fp32.txt"

if want trl && $python -c "import trl" 2>/dev/null; then
    timeout 90 $python benchmarks/train_vs_trl.py --device cuda --rounds 1 2>&1 | tee "$out/trl_default.txt"
    { big_llama; timeout 150 $python benchmarks/train_vs_trl.py --device cuda --rounds 1 --steps 10 --model /tmp/llama-1b; } 2>&1 \
        | tee "$out/trl_llama-1b.txt"
fi
