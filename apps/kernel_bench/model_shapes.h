// The tensor shapes the kernels see in one training step of the model, derived from its configuration
// (DESIGN section 3) so that `dsmil bench --kernel` times each kernel where the model runs it. Defaults:
// the DESIGN section 11 benchmark, 2 bags x 32 slabs of 4x4x128x128, ResNet18-3D width 64.
#pragma once

#include <array>
#include <cstdint>

#include "tensor/tensor.h"

namespace dsmil::kernel_bench {

struct ModelDims {
  int bags = 2, instances = 32;  // B bags of n slabs each
  int slab = 4, size = 128;      // S slices of size x size per slab
  int in_channels = 4;           // modalities
  int width = 64;                // ResNet width w
  int topk = 4;                  // K of top-k pooling (recommended-v2)
  int classes = 2;
};

// Channels-last activation shapes [N = B*n, D, H, W, C] and the head's sizes.
struct ModelShapes {
  Shape input;                  // x[N, S, size, size, in_channels]
  Shape stem;                   // stem convolution output (batch norm, ReLU, max pooling read it)
  std::array<Shape, 4> stages;  // output of each ResNet stage (stage 1: the max pool's output)
  Shape embedding;              // h[N, 8w] after global average pooling
  Shape largest_weight;         // the largest parameter: a stage-4 conv weight [8w, kd, 3, 3, 8w]
  int64_t bags = 0, instances = 0, features = 0, topk = 0, classes = 0;
};

ModelShapes model_shapes(const ModelDims& dims);

}  // namespace dsmil::kernel_bench
