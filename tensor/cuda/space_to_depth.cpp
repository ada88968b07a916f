// CUDA space-to-depth over H and W, x[N, D, H, W, C] -> xs[N, D, Hs, Ws, Cs], and its adjoint (f32 or bf16;
// kernels/space_to_depth.cu).
#include "tensor/cuda/space_to_depth.h"

#include "kernels/space_to_depth.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

void refold(FoldDirection direction, const void* from, void* to, const Shape& x_shape, const SpaceToDepthGeometry& g,
            DType dtype, const std::string& context) {
  const kernels::SpaceToDepth fold{{x_shape[0], x_shape[1], x_shape[2], x_shape[3], x_shape[4]},
                                   g.block_h,
                                   g.block_w,
                                   g.pad_h,
                                   g.pad_w,
                                   g.folded_h,
                                   g.folded_w,
                                   g.folded_c};
  const auto launch = [&](auto type) {
    using T = typename decltype(type)::type;
    const T* in = static_cast<const T*>(from);
    T* out = static_cast<T*>(to);
    return direction == FoldDirection::fold ? kernels::space_to_depth(in, out, fold, stream())
                                            : kernels::depth_to_space(in, out, fold, stream());
  };
  DSMIL_CUDA_CHECK(
      dtype == DType::BF16 ? launch(std::type_identity<__nv_bfloat16>{}) : launch(std::type_identity<float>{}),
      context);
}

Tensor space_to_depth(const Tensor& x, const SpaceToDepthGeometry& g) {
  Tensor xs = empty_device(ops::space_to_depth_shape("space_to_depth", x.shape(), g), x.dtype());
  refold(FoldDirection::fold, x.raw(), xs.raw(), x.shape(), g, x.dtype(), op_context("space_to_depth", {{"x", &x}}));
  return xs;
}

Tensor depth_to_space(const Tensor& xs, const SpaceToDepthGeometry& g, const Shape& x_shape) {
  Tensor x = empty_device(x_shape, xs.dtype());
  refold(FoldDirection::unfold, xs.raw(), x.raw(), x_shape, g, xs.dtype(), op_context("depth_to_space", {{"xs", &xs}}));
  return x;
}

}  // namespace dsmil::cuda
