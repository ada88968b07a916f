// CUDA dropout and drop-path (f32 or bf16) with counter-based masks that equal the CPU backend's bit for
// bit (kernels/random_masks.cu); the seed is read from the device where MaskSeed names one.
#include "kernels/random_masks.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

Tensor dropout(const Tensor& x, float p, MaskSeed seed, uint64_t offset) {
  const char* op = "dropout";
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::dropout(ptr<T>(x), ptr<T>(y), x.numel(), p, seed.value, seed.on_device, offset, stream()),
                     op_context(op, {{"x", &x}}));
  });
  return y;
}

Tensor drop_path(const Tensor& x, float p, MaskSeed seed, uint64_t offset) {
  const char* op = "drop_path";
  Tensor y = empty_device(x.shape(), x.dtype());
  const int64_t samples = x.size(0);
  const int64_t per_sample = samples == 0 ? 0 : x.numel() / samples;
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(
        kernels::drop_path(ptr<T>(x), ptr<T>(y), samples, per_sample, p, seed.value, seed.on_device, offset, stream()),
        op_context(op, {{"x", &x}}));
  });
  return y;
}

}  // namespace dsmil::cuda
