// The CPU backend: the reference implementation of every op in tensor/op_declarations.inc, plain
// float32 on Eigen, multithreaded with OpenMP. Contracts: tensor/ops.h. The ops that take a MathMode (matmul and
// the convolutions) leave it unnamed: the reference computes in exact fp32 whatever it says.
#pragma once

#include "tensor/ops.h"

namespace dsmil::cpu {
#include "tensor/op_declarations.inc"
}  // namespace dsmil::cpu
