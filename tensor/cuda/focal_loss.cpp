// CUDA fused focal / label-smoothed cross entropy: logits[B, C], target[B] (I32), weight[B] -> loss [1],
// grad [B, C] and per-sample losses [B], forward and backward in one kernel (kernels/focal_loss.cu). Formula and
// contract: tensor/op_declarations.inc; checked by ops::.
#include "kernels/focal_loss.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

FocalLossOut focal_loss(const Tensor& logits, const Tensor& target, const Tensor& weight, float eps, float gamma) {
  const char* op = "focal_loss";
  const int64_t batch = logits.size(0), classes = logits.size(1);
  FocalLossOut out{empty_device({1}, DType::F32), empty_device(logits.shape(), DType::F32),
                   empty_device({batch}, DType::F32)};
  DSMIL_CUDA_CHECK(kernels::focal_loss(logits.f32(), target.i32(), weight.f32(), batch, classes, eps, gamma,
                                       out.loss.f32(), out.grad.f32(), out.per_sample.f32(), stream()),
                   op_context(op, {{"logits", &logits}, {"target", &target}, {"weight", &weight}}));
  return out;
}

}  // namespace dsmil::cuda
