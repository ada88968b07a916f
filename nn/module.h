// Module: a named tree of parameters (Variables that take gradients) and buffers (state tensors such as
// batch-norm running statistics), with a training flag. Layers read like the math in their forward.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor/autograd.h"

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
// a step's masks follow from (seed, step) alone.
struct StepRandom {
  uint64_t seed = 0;
  uint64_t next = 0;
  uint64_t take(uint64_t count) {
    const uint64_t first = next;
    next += count;
    return first;
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
  bool training() const { return training_; }
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
};

}  // namespace dsmil::nn
