// Activation shapes of the ResNet-3D encoder and the MIL head for a model configuration: the stem and
// stage geometries of nn/resnet3d.cpp (DESIGN section 3) through the ops' own output-shape functions.
#include "apps/kernel_bench/model_shapes.h"

#include "tensor/ops.h"

namespace dsmil::kernel_bench {

ModelShapes model_shapes(const ModelDims& d) {
  const int kd = d.slab >= 3 ? 3 : 1;  // kernel depth, as nn::ResNet3D chooses it
  ModelShapes s;
  s.input = {int64_t{d.bags} * d.instances, d.slab, d.size, d.size, d.in_channels};
  s.stem = ops::conv3d_output_shape(s.input, {d.width, kd, 7, 7, d.in_channels},
                                    Conv3dGeometry{{kd, 7, 7}, {1, 2, 2}, {kd / 2, 3, 3}});
  s.stages[0] = ops::pool3d_output_shape(s.stem, Pool3dGeometry{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}});
  for (size_t stage = 1; stage < s.stages.size(); ++stage) {
    // The first block of stages 2-4 halves H and W; later blocks keep the shape.
    const int64_t in_channels = s.stages[stage - 1].back(), channels = int64_t{d.width} << stage;
    s.stages[stage] = ops::conv3d_output_shape(s.stages[stage - 1], {channels, kd, 3, 3, in_channels},
                                               Conv3dGeometry{{kd, 3, 3}, {1, 2, 2}, {kd / 2, 1, 1}});
  }
  const int64_t features = s.stages[3].back();
  s.embedding = {s.input[0], features};
  s.largest_weight = {features, kd, 3, 3, features};
  s.bags = d.bags;
  s.instances = d.instances;
  s.features = features;
  s.topk = d.topk < d.instances ? d.topk : d.instances;
  s.classes = d.classes;
  return s;
}

}  // namespace dsmil::kernel_bench
