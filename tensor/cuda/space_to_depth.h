// The space-to-depth fold of tensor/ops.h on raw device buffers (kernels/space_to_depth.cu), shared by the
// space_to_depth / depth_to_space ops and the convolution that runs on the fold (tensor/cuda/conv3d.cpp).
#pragma once

#include <string>

#include "tensor/ops.h"

namespace dsmil::cuda {

enum class FoldDirection { fold, unfold };

// fold: to = the fold of the unfolded x `from` (x_shape); unfold: to (x_shape) = the adjoint of the fold `from`.
// Queued on the library stream; `context` names the caller in errors.
void refold(FoldDirection direction, const void* from, void* to, const Shape& x_shape, const SpaceToDepthGeometry& g,
            DType dtype, const std::string& context);

}  // namespace dsmil::cuda
