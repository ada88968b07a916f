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
  int topk = 3;  // K of top-k pooling (max pooling is K = 1)
  Attention attention = Attention::Gated;
  float attention_temperature = 1.0f;  // T_att
  float feature_dropout = 0.5f;        // dropout on h_i (training)
  float instance_dropout = 0.0f;       // each instance dropped from the bag with this probability
  int query_size = 128;                // q_i (dsmil) or the gated attention's hidden size
  // Both classifiers (instance and bag) start at 0, so every bag's first logits are 0 whatever the init seed;
  // the other parameters draw what they draw without it.
  bool zero_init_classifiers = false;
};

struct ModelConfig {
  nn::ResNetConfig encoder;
  HeadConfig head;
};

// Everything one forward pass gives: logits and what the diagnostics and reports need. The diagnostics
// stay on the model's device (read them with to_vector()): copying them to the host in the forward pass
// would make the host wait for the GPU in the middle of every training step.
struct MilOutput {
  Variable y1, y2, y;          // stream-1, stream-2 and bag logits [B, 2]
  Tensor embeddings;           // h [B*n, F] from the encoder
  Variable attention_weights;  // a [B, n], differentiable
  Tensor attention;            // a [B, n]
  Tensor attention_stats;      // [B, 3]: entropy, top-1 weight, effective number of instances
  Tensor margins;              // z_i = c_i1 - c_i0 [B, n]
  // Stream-1 weight of each instance [B, n]: 1/K on the selected (max/top-k), s_i (soft).
  Tensor selection;
  Tensor mask;  // the mask actually used (after instance dropout) [B, n] I32 (CPU)
};

class DualStreamHead : public nn::Module {
 public:
  DualStreamHead(int64_t features, const HeadConfig& config, nn::InitEngine& engine);
  // The mask the head works with: mask[B, n] (I32, CPU) with instance dropout applied in training, drawn
  // on the host from the step's counters.
  Tensor instance_mask(const Tensor& mask, nn::StepRandom& random) const;
  // h[B*n, F]; mask[B, n] as instance_mask gave it and its copy on h's device; tau = soft-pooling temperature.
  MilOutput forward(const Variable& h, const Tensor& mask, const Tensor& device_mask, float tau,
                    nn::StepRandom& random);
  const HeadConfig& config() const { return config_; }

 private:
  // [[-1], [1]] as a [1, 2] weight on the device: z = c1 - c0 as one matrix product (kept, not uploaded
  // each step).
  const Tensor& margin_weights(Device device);

  HeadConfig config_;
  Tensor margin_weights_;
  nn::Linear instance_classifier_, value_, bag_classifier_;
  std::unique_ptr<nn::Linear> query1_, query2_;           // dsmil attention
  std::unique_ptr<nn::Linear> gate_v_, gate_u_, gate_w_;  // gated attention
};

class DualStreamMIL : public nn::Module {
 public:
  DualStreamMIL(const ModelConfig& config, uint64_t init_seed);
  // x[B*n, S, H, W, 4] (channels-last slabs, bag-major), mask[B, n] I32 on the CPU.
  MilOutput forward(const Variable& x, const Tensor& mask, float tau, nn::StepRandom& random);
  // forward() in two parts, for a pass captured as a CUDA graph (which copies nothing between host and device): the
  // head's mask drawn on the host (the instance dropout: the step's first random counters), then the pass from that
  // mask and its copy on x's device (device_mask, written before the pass runs).
  Tensor draw_head_mask(const Tensor& mask, nn::StepRandom& random) const;
  MilOutput forward_drawn(const Variable& x, const Tensor& head_mask, const Tensor& device_mask, float tau,
                          nn::StepRandom& random);
  const ModelConfig& config() const { return config_; }
  void to(Device device);
  Device device() const { return device_; }
  nn::ResNet3D& encoder() { return encoder_; }

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
  float stream_weight = 0.5f;   // lambda
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
// A batch's targets [B] (I32) and class weights [B] (F32) on the device. Made before the forward pass: an
// upload after it would make the host wait for the whole forward pass first.
struct LossTargets {
  Tensor target, weight;
  double weight_sum = 0;  // of this batch
};
// target[B] I32 on the CPU, each 0 (LGG) or 1 (HGG): another label is a ShapeError (it has no class weight).
LossTargets loss_targets(const Tensor& target, const float class_weight[2], Device device);
Variable mil_loss(const MilOutput& out, const LossTargets& targets, const LossConfig& config,
                  const StepShare& share = {});
// The same with the targets uploaded here.
Variable mil_loss(const MilOutput& out, const Tensor& target, const float class_weight[2], const LossConfig& config,
                  const StepShare& share = {});

}  // namespace dsmil::mil
