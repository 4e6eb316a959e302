#!/usr/bin/env bash
# Download the wheels an offline GPU host with torch/transformers/peft/accelerate lacks (Python 3.12, manylinux x86_64) into .whl/a and .whl/b.
# Two sets of under 64 MiB each, so each can be copied over on its own. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dl() {
  local dest=$1; shift
  mkdir -p "$dest"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dest" "$@"
}
# a: 4-bit, the project's trainer stack, Liger kernels, the fonts the synthetic data is rendered with
dl .whl/a bitsandbytes==0.50.2 trl==1.15.0 datasets==4.8.4 dill multiprocess xxhash liger-kernel==0.8.5 \
  fontpkg fontpkg-noto-sans fontpkg-noto-sans-khmer pillow \
  pytest pluggy iniconfig
# fontTools for the synthetic data's glyph check: its pure-Python build (1 MB, not 5)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any \
  -d .whl/a fonttools
# b: unsloth and what it imports besides set a
dl .whl/b unsloth==2026.10.9 unsloth-zoo==2026.10.9 tyro docstring-parser shtab typeguard cut_cross_entropy \
  torchao msgspec hf_transfer diffusers json5 nest_asyncio structlog
du -sh .whl/a .whl/b
