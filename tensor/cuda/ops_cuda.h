// The CUDA backend: every op of tensor/op_declarations.inc on the GPU through cuDNN, cuBLAS and the
// hand-written kernels of kernels/. Contracts: tensor/ops.h; each op is tested against its CPU twin.
#pragma once

#include "tensor/ops.h"

namespace dsmil::cuda {
#include "tensor/op_declarations.inc"
}  // namespace dsmil::cuda
