// ResNet-3D: stem conv (kd,7,7)/(1,2,2) -> BN -> ReLU -> max pool (1,3,3)/(1,2,2); four stages of
// BasicBlocks; global average pooling over (S, h, w).
#include "nn/resnet3d.h"

#include <fmt/format.h>

namespace dsmil::nn {

std::vector<int> blocks_per_stage(int depth) {
  switch (depth) {
    case 10:
      return {1, 1, 1, 1};
    case 18:
      return {2, 2, 2, 2};
    case 34:
      return {3, 4, 6, 3};
  }
  throw Error(fmt::format("ResNet-3D depth {} is not one of 10, 18, 34", depth));
}

namespace {
Conv3dGeometry block_conv(int kd, int stride_hw) { return {{kd, 3, 3}, {1, stride_hw, stride_hw}, {kd / 2, 1, 1}}; }

// Drop-path as the per-sample factor keep / (1 - p) of the residual branch: drop_path of ones gives the
// very factors fn::drop_path multiplies by (same counters), for the fused batch norm to apply.
Tensor drop_path_factors(int64_t samples, float p, MaskSeed seed, uint64_t offset, Device device) {
  return ops::drop_path(Tensor::full({samples}, 1.0f, device), p, seed, offset);
}
}  // namespace

BasicBlock::BasicBlock(int64_t in, int64_t out, int stride_hw, int kd, float drop_path, bool zero_init_residual,
                       InitEngine& engine)
    : conv1_(in, out, block_conv(kd, stride_hw), engine),
      conv2_(out, out, block_conv(kd, 1), engine),
      bn1_(out),
      bn2_(out),
      drop_path_(drop_path) {
  if (zero_init_residual) bn2_.gamma.value().copy_from(Tensor::zeros({out}));
  register_module("conv1", conv1_);
  register_module("bn1", bn1_);
  register_module("conv2", conv2_);
  register_module("bn2", bn2_);
  if (stride_hw != 1 || in != out) {
    shortcut_conv_ =
        std::make_unique<Conv3d>(in, out, Conv3dGeometry{{1, 1, 1}, {1, stride_hw, stride_hw}, {0, 0, 0}}, engine);
    shortcut_bn_ = std::make_unique<BatchNorm3d>(out);
    register_module("downsample.conv", *shortcut_conv_);
    register_module("downsample.bn", *shortcut_bn_);
  }
}

// relu(drop_path(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut), each BN fused with what follows it.
Variable BasicBlock::forward(const Variable& x, StepRandom& random) {
  const Variable hidden = bn1_.forward_relu(conv1_.forward(x));
  const int64_t samples = x.shape()[0];
  const Tensor keep = training() && drop_path_ > 0.0f ? drop_path_factors(samples, drop_path_, random.mask_seed(),
                                                                          random.take(samples), x.value().device())
                                                      : Tensor();
  const Variable shortcut = shortcut_conv_ ? shortcut_bn_->forward(shortcut_conv_->forward(x)) : x;
  return bn2_.forward_relu(conv2_.forward(hidden), shortcut, keep);
}

ResNet3D::ResNet3D(const ResNetConfig& config, InitEngine& engine)
    : config_(config),
      stem_conv_(
          config.in_channels, config.width,
          Conv3dGeometry{{config.slab_depth >= 3 ? 3 : 1, 7, 7}, {1, 2, 2}, {config.slab_depth >= 3 ? 1 : 0, 3, 3}},
          engine),
      stem_bn_(config.width) {
  register_module("stem.conv", stem_conv_);
  register_module("stem.bn", stem_bn_);
  const int kd = config.slab_depth >= 3 ? 3 : 1;
  const std::vector<int> stages = blocks_per_stage(config.depth);
  int total = 0;
  for (int n : stages) total += n;
  int index = 0;
  int64_t in = config.width;
  for (size_t stage = 0; stage < stages.size(); ++stage) {
    const int64_t out = static_cast<int64_t>(config.width) << stage;
    for (int b = 0; b < stages[stage]; ++b, ++index) {
      const float p = total > 1 ? config.drop_path * index / (total - 1) : config.drop_path;
      blocks_.push_back(
          std::make_unique<BasicBlock>(in, out, stage > 0 && b == 0 ? 2 : 1, kd, p, config.zero_init_residual, engine));
      register_module(fmt::format("layer{}.{}", stage + 1, b), *blocks_.back());
      in = out;
    }
  }
}

Variable ResNet3D::forward(const Variable& x, StepRandom& random) {
  const Variable input = config_.bf16 ? fn::to_dtype(x, DType::BF16) : x;
  Variable h = stem_bn_.forward_relu(stem_conv_.forward(input));
  h = fn::maxpool3d(h, Pool3dGeometry{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}});
  for (auto& block : blocks_) h = block->forward(h, random);
  last_stage_output_ = record_last_stage_ ? h.value() : Tensor();
  return fn::global_avg_pool(h);
}

}  // namespace dsmil::nn
