// Module: a named tree of parameters (Variables that take gradients) and buffers (state tensors such as
// batch-norm running statistics), with a training flag and a math mode. Layers read like the math in their forward.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace dsmil::nn {

struct NamedParameter {
  std::string name;
  Variable* variable;
  bool weight_decay;  // AdamW decays conv and linear weights, never biases or batch-norm parameters
};
struct NamedBuffer {
  std::string name;
  Tensor* tensor;
};

// Counter-based randomness of one forward pass: every random op takes the next `count` counters, so
// a step's masks follow from (seed, step) alone. In data-parallel training a rank holds bags
// [first_bag, first_bag + local_bags) of the step's global_bags: take() then hands it its bags' share
// of the counters the whole step would take and advances past all of them, so that every rank draws
// what one process holding the whole batch draws. global_bags = 0: this process holds the whole step.
// seed_on_device (optional): where the CUDA masks read the seed instead (a step captured as a CUDA graph; the host's
// own draws, the instance dropout, take `seed`).
struct StepRandom {
  uint64_t seed = 0;
  uint64_t next = 0;
  int64_t first_bag = 0, local_bags = 0, global_bags = 0;
  const uint64_t* seed_on_device = nullptr;
  MaskSeed mask_seed() const { return {seed, seed_on_device}; }
  uint64_t take(uint64_t count) {
    const uint64_t first = next;
    if (global_bags == 0) {
      next += count;
      return first;
    }
    if (local_bags <= 0 || count % static_cast<uint64_t>(local_bags) != 0)
      throw Error("StepRandom::take: " + std::to_string(count) + " counters do not split over " +
                  std::to_string(local_bags) + " bags");
    const uint64_t per_bag = count / static_cast<uint64_t>(local_bags);
    next += per_bag * static_cast<uint64_t>(global_bags);
    return first + per_bag * static_cast<uint64_t>(first_bag);
  }
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  std::vector<NamedParameter> parameters();
  std::vector<NamedBuffer> buffers();
  void set_training(bool training);
  // The numerics of this module's convolutions and matrix products, for it and every module under it (a fresh
  // module holds the default MathMode).
  void set_math_mode(const MathMode& mode);
  // Calls f on this module and every module under it, parents first.
  void visit(const std::function<void(Module&)>& f);
  bool training() const { return training_; }
  const MathMode& math_mode() const { return math_mode_; }
  // Moves every parameter and buffer to `device` (gradients are dropped).
  void to(Device device);
  int64_t parameter_count();

 protected:
  void register_parameter(const std::string& name, Variable& v, bool weight_decay);
  void register_buffer(const std::string& name, Tensor& t);
  void register_module(const std::string& name, Module& m);

 private:
  struct Child {
    std::string name;
    Module* module;
  };
  std::vector<NamedParameter> own_parameters_;
  std::vector<NamedBuffer> own_buffers_;
  std::vector<Child> children_;
  bool training_ = true;
  MathMode math_mode_;
};

}  // namespace dsmil::nn
