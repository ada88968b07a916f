// CUDA fused focal / label-smoothed cross entropy: logits[B, C], target[B] (I32), weight[B] -> loss [1],
// grad [B, C] and per-sample losses [B], forward and backward in one kernel (kernels/focal_loss.cu).
#include "kernels/focal_loss.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

FocalLossOut focal_loss(const Tensor& logits, const Tensor& target, const Tensor& weight, float eps, float gamma) {
  const char* op = "focal_loss";
  check_on_device(op, logits, "logits");
  check_ndim(op, logits, 2, "logits");
  check_dtype(op, logits, DType::F32, "logits");
  const int64_t batch = logits.size(0), classes = logits.size(1);
  check_on_device(op, target, "target");
  check_dtype(op, target, DType::I32, "target");
  check_shape(op, target, {batch}, "target");
  check_f32_vector(op, weight, batch, "weight");
  if (gamma < 0.0f) throw ShapeError(fmt::format("{}: gamma {} must be >= 0", op, gamma));
  if (classes < 1) throw ShapeError(fmt::format("{}: logits {} has no classes", op, logits.describe()));
  FocalLossOut out{empty_device({1}, DType::F32), empty_device(logits.shape(), DType::F32),
                   empty_device({batch}, DType::F32)};
  DSMIL_CUDA_CHECK(kernels::focal_loss(logits.f32(), target.i32(), weight.f32(), batch, classes, eps, gamma,
                                       out.loss.f32(), out.grad.f32(), out.per_sample.f32(), stream()),
                   op_context(op, {{"logits", &logits}, {"target", &target}, {"weight", &weight}}));
  return out;
}

}  // namespace dsmil::cuda
