// DualStreamMIL-3D (DESIGN section 3): a ResNet-3D encoder embeds each instance (a slab of S slices of
// the 4 modalities), an instance classifier gives stream 1 through max / top-k / soft pooling, an
// attention over the bag's instances (DSMIL's critical-query attention, or gated attention) gives
// stream 2, and the bag logits are their mean.
#pragma once

#include <string>

#include "nn/layers.h"
#include "nn/resnet3d.h"

namespace dsmil::mil {

enum class Pooling { Max, TopK, Soft };
enum class Attention { Dsmil, Gated };
Pooling parse_pooling(const std::string& name);
Attention parse_attention(const std::string& name);
const char* pooling_name(Pooling p);
const char* attention_name(Attention a);

struct HeadConfig {
  Pooling pooling = Pooling::TopK;
  int topk = 3;                       // K of top-k pooling (max pooling is K = 1)
  Attention attention = Attention::Gated;
  float attention_temperature = 1.0f; // T_att
  float feature_dropout = 0.5f;       // dropout on h_i (training)
  float instance_dropout = 0.0f;      // each instance dropped from the bag with this probability
  int query_size = 128;               // q_i (dsmil) or the gated attention's hidden size
};

struct ModelConfig {
  nn::ResNetConfig encoder;
  HeadConfig head;
};

// Everything one forward pass gives: logits and what the diagnostics and reports need.
struct MilOutput {
  Variable y1, y2, y;  // stream-1, stream-2 and bag logits [B, 2]
  Tensor embeddings;   // h [B*n, F] from the encoder (on the model's device)
  Variable attention_weights;  // a [B, n] on the model's device, differentiable
  Tensor attention;    // a [B, n] (CPU)
  Tensor attention_stats;  // [B, 3]: entropy, top-1 weight, effective number of instances (CPU)
  Tensor margins;      // z_i = c_i1 - c_i0 [B, n] (CPU)
  Tensor selection;    // stream-1 weight of each instance [B, n]: 1/K on the selected (max/top-k), s_i (soft) (CPU)
  Tensor mask;         // the mask actually used (after instance dropout) [B, n] I32 (CPU)
};

class DualStreamHead : public nn::Module {
 public:
  DualStreamHead(int64_t features, const HeadConfig& config, nn::InitEngine& engine);
  // h[B*n, F], mask[B, n] (I32, on the CPU); tau = soft-pooling temperature.
  MilOutput forward(const Variable& h, const Tensor& mask, float tau, nn::StepRandom& random);
  const HeadConfig& config() const { return config_; }

 private:
  HeadConfig config_;
  nn::Linear instance_classifier_, value_, bag_classifier_;
  std::unique_ptr<nn::Linear> query1_, query2_;          // dsmil attention
  std::unique_ptr<nn::Linear> gate_v_, gate_u_, gate_w_;  // gated attention
};

class DualStreamMIL : public nn::Module {
 public:
  DualStreamMIL(const ModelConfig& config, uint64_t init_seed);
  // x[B*n, S, H, W, 4] (channels-last slabs, bag-major), mask[B, n] I32 on the CPU.
  MilOutput forward(const Variable& x, const Tensor& mask, float tau, nn::StepRandom& random);
  const ModelConfig& config() const { return config_; }
  void to(Device device);
  Device device() const { return device_; }

 private:
  ModelConfig config_;
  nn::InitEngine engine_;
  nn::ResNet3D encoder_;
  DualStreamHead head_;
  Device device_ = Device::CPU;
};

// The loss of DESIGN section 4 over a batch: sum_b alpha_t [lambda l(y1) + (1 - lambda) l(y2)] / sum_b alpha_t.
struct LossConfig {
  float label_smoothing = 0.1f;
  float focal_gamma = 0.0f;
  float stream_weight = 0.5f;  // lambda
  float entropy_weight = 0.0f;  // beta: the objective subtracts beta * mean attention entropy (collapse experiments)
};
// class_weight[2]: alpha per class (1, 1 for `none`). target[B] I32 on the CPU. With entropy_weight
// beta > 0, beta times the bags' mean attention entropy is subtracted (a reward for spread attention).
// In data-parallel training `share` names the whole step (its class-weight sum and bag count): the loss
// then divides by those, so that the ranks' losses, and their gradients, add up to the whole step's.
struct StepShare {
  double weight_sum = 0;  // 0: this batch is the whole step
  int64_t bags = 0;
};
Variable mil_loss(const MilOutput& out, const Tensor& target, const float class_weight[2], const LossConfig& config,
                  const StepShare& share = {});

}  // namespace dsmil::mil
