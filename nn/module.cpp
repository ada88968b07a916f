// Module tree bookkeeping: recursive, prefixed names for parameters and buffers.
#include "nn/module.h"

namespace dsmil::nn {

void Module::register_parameter(const std::string& name, Variable& v, bool weight_decay) {
  own_parameters_.push_back({name, &v, weight_decay});
}
void Module::register_buffer(const std::string& name, Tensor& t) { own_buffers_.push_back({name, &t}); }
void Module::register_module(const std::string& name, Module& m) { children_.push_back({name, &m}); }

std::vector<NamedParameter> Module::parameters() {
  std::vector<NamedParameter> out = own_parameters_;
  for (const Child& c : children_)
    for (NamedParameter p : c.module->parameters()) {
      p.name = c.name + "." + p.name;
      out.push_back(p);
    }
  return out;
}

std::vector<NamedBuffer> Module::buffers() {
  std::vector<NamedBuffer> out = own_buffers_;
  for (const Child& c : children_)
    for (NamedBuffer b : c.module->buffers()) {
      b.name = c.name + "." + b.name;
      out.push_back(b);
    }
  return out;
}

void Module::set_training(bool training) {
  training_ = training;
  for (const Child& c : children_) c.module->set_training(training);
}

void Module::set_math_mode(const MathMode& mode) {
  math_mode_ = mode;
  for (const Child& c : children_) c.module->set_math_mode(mode);
}

void Module::visit(const std::function<void(Module&)>& f) {
  f(*this);
  for (const Child& c : children_) c.module->visit(f);
}

void Module::to(Device device) {
  for (NamedParameter& p : parameters()) *p.variable = Variable(p.variable->value().to(device), true);
  for (NamedBuffer& b : buffers()) *b.tensor = b.tensor->to(device);
}

int64_t Module::parameter_count() {
  int64_t n = 0;
  for (const NamedParameter& p : parameters()) n += p.variable->value().numel();
  return n;
}

}  // namespace dsmil::nn
