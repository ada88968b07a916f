# Sourced by the scripts run on the GPU machine: puts cuDNN 9.19 from PyTorch's environment (the system's
# 9.14 is in the range with wrong 3-D convolutions, shared/PERF-NOTES.md), the NCCL beside it and the carried
# binaries' folder on LD_LIBRARY_PATH. Sets cudnn_found to the folder, or leaves it empty. NVLink multicast
# stays off in NCCL (the machine's rule: it can take the host's shared GPUs out of service).
cudnn_found=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib
if [ ! -e "$cudnn_found/libcudnn.so.9" ]; then
  cudnn_found=$(python3 -c 'import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null || true)
fi
[ -n "$cudnn_found" ] && [ -e "$cudnn_found/libcudnn.so.9" ] || cudnn_found=
export LD_LIBRARY_PATH="${cudnn_found:+$cudnn_found:}$carry${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nccl_found=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib
[ -e "$nccl_found/libnccl.so.2" ] && export LD_LIBRARY_PATH="$nccl_found:$LD_LIBRARY_PATH"
export NCCL_NVLS_ENABLE=0
