// The 3-D ResNet encoder of DESIGN section 3: x[N, S, H, W, 4] (one slab per instance, channels-last)
// -> h[N, 8w]. BasicBlocks per stage: ResNet-10 [1,1,1,1], -18 [2,2,2,2], -34 [3,4,6,3].
#pragma once

#include <memory>
#include <vector>

#include "nn/layers.h"

namespace dsmil::nn {

struct ResNetConfig {
  int depth = 18;      // 10, 18 or 34
  int width = 64;      // w: stage i has w * 2^i channels
  int slab_depth = 3;  // S; the kernel depth kd is 3 when S >= 3, else 1
  int in_channels = 4;
  float drop_path = 0.0f;  // stochastic depth of the last block; linear from 0 over the blocks
  bool bf16 = false;       // mixed precision: bf16 activations and conv weights, fp32 master weights,
                           // statistics and pooled embedding (CUDA only)
  // Each block's last batch-norm scale starts at 0, so every residual branch starts as the identity
  // (Goyal et al. 2017, torchvision's zero_init_residual).
  bool zero_init_residual = false;
};

class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in, int64_t out, int stride_hw, int kd, float drop_path, bool zero_init_residual,
             InitEngine& engine);
  Variable forward(const Variable& x, StepRandom& random);

 private:
  Conv3d conv1_, conv2_;
  BatchNorm3d bn1_, bn2_;
  std::unique_ptr<Conv3d> shortcut_conv_;
  std::unique_ptr<BatchNorm3d> shortcut_bn_;
  float drop_path_;
};

class ResNet3D : public Module {
 public:
  ResNet3D(const ResNetConfig& config, InitEngine& engine);
  Variable forward(const Variable& x, StepRandom& random);
  int64_t embedding_size() const { return 8 * config_.width; }
  const ResNetConfig& config() const { return config_; }
  // While set, forward keeps a handle on the last stage's output [N, S', h, w, 8w] (after its ReLU) for
  // training-health figures; off by default so that the activation is not held past its backward pass.
  void set_record_last_stage(bool record) { record_last_stage_ = record; }
  const Tensor& last_stage_output() const { return last_stage_output_; }

 private:
  ResNetConfig config_;
  bool record_last_stage_ = false;
  Tensor last_stage_output_;
  Conv3d stem_conv_;
  BatchNorm3d stem_bn_;
  std::vector<std::unique_ptr<BasicBlock>> blocks_;
};

std::vector<int> blocks_per_stage(int depth);

}  // namespace dsmil::nn
