// CUDA optimizer state updates on F32 tensors, in place: AdamW with decoupled weight decay, and the EMA
// of weights (kernels/optimizer_updates.cu).
#include <cmath>

#include "kernels/optimizer_updates.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

void check_f32_like(const char* op, const Tensor& t, const Tensor& like, const char* name) {
  check_on_device(op, t, name);
  check_dtype(op, t, DType::F32, name);
  check_same_shape(op, t, like);
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  const char* op = "adamw_step";
  check_f32_like(op, param, param, "param");
  check_f32_like(op, grad, param, "grad");
  check_f32_like(op, m, param, "m");
  check_f32_like(op, v, param, "v");
  if (h.step < 1) throw ShapeError(fmt::format("{}: step must be >= 1 (1-based), got {}", op, h.step));
  const kernels::AdamWStep step{h.lr, h.beta1, h.beta2, h.eps, h.weight_decay,
                                static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), h.step)),
                                static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta2), h.step))};
  DSMIL_CUDA_CHECK(kernels::adamw(param.f32(), grad.f32(), m.f32(), v.f32(), param.numel(), step, stream()),
                   op_context(op, {{"param", &param}, {"grad", &grad}}));
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  const char* op = "ema_update";
  check_f32_like(op, ema, ema, "ema");
  check_f32_like(op, value, ema, "value");
  DSMIL_CUDA_CHECK(kernels::ema(ema.f32(), value.f32(), ema.numel(), decay, stream()),
                   op_context(op, {{"ema", &ema}, {"value", &value}}));
}

}  // namespace dsmil::cuda
