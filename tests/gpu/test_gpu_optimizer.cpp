// AdamW and EMA on the GPU: the per-tensor ops and the multi-tensor ones (gradient-norm clip folded in) against
// their CPU twins and each other, bit-identical reruns, lists longer than one launch, a table rebuilt for new storage.
#include <algorithm>
#include <random>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// Model-like tensors: a weight of several chunks, per-channel vectors, a scalar, a 3-D kernel.
const std::vector<Shape> kShapes = {{515, 67}, {64}, {1}, {3, 3, 3, 8}, {20000}, {64}};

// One AdamW list on both devices with the same values. Tensor i is decayed when i is even; every third
// tensor (from the second) has no gradient.
struct AdamWTwin {
  std::vector<Tensor> params_d, m_d, v_d, grads_d, params_h, m_h, v_h, grads_h;
  std::vector<bool> decayed;
  AdamWTensors list_d, list_h;

  explicit AdamWTwin(const std::vector<Shape>& shapes) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Twin p = random_twin(shapes[i], DType::F32), m = random_twin(shapes[i], DType::F32, -0.1f, 0.1f);
      const Twin v = random_twin(shapes[i], DType::F32, 1e-4f, 1e-2f);
      params_d.push_back(p.device);
      params_h.push_back(p.host);
      m_d.push_back(m.device);
      m_h.push_back(m.host);
      v_d.push_back(v.device);
      v_h.push_back(v.host);
      decayed.push_back(i % 2 == 0);
    }
    new_gradients();
    for (size_t i = 0; i < shapes.size(); ++i) {
      list_d.params.push_back(&params_d[i]);
      list_d.m.push_back(&m_d[i]);
      list_d.v.push_back(&v_d[i]);
      list_h.params.push_back(&params_h[i]);
      list_h.m.push_back(&m_h[i]);
      list_h.v.push_back(&v_h[i]);
    }
    list_d.decayed = list_h.decayed = decayed;
  }
  // Fresh gradient tensors, as every training step has.
  void new_gradients() {
    grads_d.assign(params_d.size(), Tensor());
    grads_h.assign(params_d.size(), Tensor());
    for (size_t i = 0; i < params_d.size(); ++i)
      if (i % 3 != 1) {
        const Twin g = random_twin(params_d[i].shape(), DType::F32);
        grads_d[i] = g.device;
        grads_h[i] = g.host;
      }
  }
  void check_against_cpu(const std::string& what) const {
    for (size_t i = 0; i < params_d.size(); ++i) {
      const std::string where = what + " tensor " + std::to_string(i);
      check_close(where + " param", params_d[i], params_h[i], Precision::F32);
      check_close(where + " m", m_d[i], m_h[i], Precision::F32);
      check_close(where + " v", v_d[i], v_h[i], Precision::F32);
    }
  }
};

AdamWHyper hyper_at(int64_t step) {
  AdamWHyper h;
  h.lr = 3e-3f;
  h.weight_decay = 0.05f;
  h.step = step;
  return h;
}

// Two steps of the twin on both devices (the second with new gradient tensors); the norms checked too.
void two_steps(AdamWTwin& twin, float max_norm, const std::string& what) {
  for (int64_t step = 1; step <= 2; ++step) {
    if (step == 2) twin.new_gradients();
    Tensor norm_d = Tensor::zeros({1}, DType::F32, Device::CUDA), norm_h = Tensor::zeros({1});
    ops::multi_tensor_adamw(twin.list_d, twin.grads_d, hyper_at(step), max_norm, norm_d);
    cpu::multi_tensor_adamw(twin.list_h, twin.grads_h, hyper_at(step), max_norm, norm_h);
    const std::string where = what + " step " + std::to_string(step);
    if (max_norm > 0.0f) check_close(where + " grad norm", norm_d, norm_h, Precision::F32);
    twin.check_against_cpu(where);
  }
}

}  // namespace

TEST_CASE("gpu multi-tensor AdamW matches its CPU twin, clipped or not, and the per-tensor op") {
  if (skip_without_gpu()) return;
  // The gradients' norm is about 110: 1 clips, 1e6 does not.
  for (const float max_norm : {0.0f, 1.0f, 1e6f}) {
    AdamWTwin twin(kShapes);
    two_steps(twin, max_norm, "multi_tensor_adamw max norm " + std::to_string(max_norm));
  }

  // Unclipped, the same per-element code as adamw_step: one tensor at a time on the GPU must agree.
  AdamWTwin multi(kShapes);
  std::vector<Tensor> params = multi.params_d, m = multi.m_d, v = multi.v_d;
  for (std::vector<Tensor>* list : {&params, &m, &v})
    for (Tensor& t : *list) t = t.clone();
  Tensor unused;
  ops::multi_tensor_adamw(multi.list_d, multi.grads_d, hyper_at(7), 0.0f, unused);
  for (size_t i = 0; i < params.size(); ++i) {
    AdamWHyper h = hyper_at(7);
    if (!multi.decayed[i]) h.weight_decay = 0.0f;
    if (multi.grads_d[i].defined()) ops::adamw_step(params[i], multi.grads_d[i], m[i], v[i], h);
    check_close("multi_tensor_adamw vs adamw_step param " + std::to_string(i), multi.params_d[i], params[i],
                Precision::F32);
    check_close("multi_tensor_adamw vs adamw_step m " + std::to_string(i), multi.m_d[i], m[i], Precision::F32);
  }
}

TEST_CASE("gpu multi-tensor AdamW: lists over one launch, bit-identical reruns, a table rebuilt for new storage") {
  if (skip_without_gpu()) return;
  // 300 tensors (more than kernels::kTensorsPerLaunch) of 1 to 3000 elements.
  std::vector<Shape> many;
  std::uniform_int_distribution<int64_t> size(1, 3000);
  for (int i = 0; i < 300; ++i) many.push_back({size(test::rng())});
  AdamWTwin twin(many);
  two_steps(twin, 1.0f, "multi_tensor_adamw 300 tensors");

  // The same inputs twice: the norm and every update bit-identical.
  AdamWTwin first(kShapes);
  std::vector<Tensor> p0, m0, v0;
  for (size_t i = 0; i < kShapes.size(); ++i) {
    p0.push_back(first.params_d[i].clone());
    m0.push_back(first.m_d[i].clone());
    v0.push_back(first.v_d[i].clone());
  }
  Tensor norm_a = Tensor::zeros({1}, DType::F32, Device::CUDA), norm_b = Tensor::zeros({1}, DType::F32, Device::CUDA);
  ops::multi_tensor_adamw(first.list_d, first.grads_d, hyper_at(3), 1.0f, norm_a);
  AdamWTensors rerun{{}, {}, {}, first.decayed, nullptr};
  for (size_t i = 0; i < kShapes.size(); ++i) {
    rerun.params.push_back(&p0[i]);
    rerun.m.push_back(&m0[i]);
    rerun.v.push_back(&v0[i]);
  }
  ops::multi_tensor_adamw(rerun, first.grads_d, hyper_at(3), 1.0f, norm_b);
  check_identical("multi_tensor_adamw grad norm", norm_a, norm_b);
  for (size_t i = 0; i < kShapes.size(); ++i)
    check_identical("multi_tensor_adamw param " + std::to_string(i), first.params_d[i], p0[i]);

  // A parameter moved to new storage (as Module::to does) after the table was built: the next step updates it.
  AdamWTwin moved(kShapes);
  Tensor norm_d = Tensor::zeros({1}, DType::F32, Device::CUDA), norm_h = Tensor::zeros({1});
  ops::multi_tensor_adamw(moved.list_d, moved.grads_d, hyper_at(1), 1.0f, norm_d);
  cpu::multi_tensor_adamw(moved.list_h, moved.grads_h, hyper_at(1), 1.0f, norm_h);
  moved.params_d[0] = moved.params_d[0].clone();
  moved.m_d[4] = moved.m_d[4].clone();
  moved.new_gradients();
  ops::multi_tensor_adamw(moved.list_d, moved.grads_d, hyper_at(2), 1.0f, norm_d);
  cpu::multi_tensor_adamw(moved.list_h, moved.grads_h, hyper_at(2), 1.0f, norm_h);
  moved.check_against_cpu("multi_tensor_adamw after new storage");
}

TEST_CASE("gpu multi-tensor EMA matches its CPU twin and ema_update per tensor") {
  if (skip_without_gpu()) return;
  std::vector<Tensor> ema_d, ema_h, values_d, values_h, per_tensor;
  for (const Shape& s : kShapes) {
    const Twin e = random_twin(s, DType::F32), x = random_twin(s, DType::F32);
    ema_d.push_back(e.device);
    ema_h.push_back(e.host);
    per_tensor.push_back(e.device.clone());
    values_d.push_back(x.device);
    values_h.push_back(x.host);
  }
  EmaTensors list_d, list_h;
  for (size_t i = 0; i < kShapes.size(); ++i) {
    list_d.ema.push_back(&ema_d[i]);
    list_d.values.push_back(&values_d[i]);
    list_h.ema.push_back(&ema_h[i]);
    list_h.values.push_back(&values_h[i]);
  }
  const float decay = std::uniform_real_distribution<float>(0.9f, 0.9999f)(test::rng());
  for (int update = 0; update < 2; ++update) {
    ops::multi_tensor_ema(list_d, decay);
    cpu::multi_tensor_ema(list_h, decay);
    for (size_t i = 0; i < kShapes.size(); ++i) ops::ema_update(per_tensor[i], values_d[i], decay);
  }
  for (size_t i = 0; i < kShapes.size(); ++i) {
    check_close("multi_tensor_ema tensor " + std::to_string(i), ema_d[i], ema_h[i], Precision::F32);
    check_close("multi_tensor_ema vs ema_update tensor " + std::to_string(i), ema_d[i], per_tensor[i], Precision::F32);
  }
}

TEST_CASE("gpu AdamW step and EMA update match the CPU") {
  if (skip_without_gpu()) return;
  const Shape shape{515, 67};
  const Twin param = random_twin(shape, DType::F32), grad = random_twin(shape, DType::F32);
  const Twin m = random_twin(shape, DType::F32, -0.1f, 0.1f), v = random_twin(shape, DType::F32, 0.0f, 0.01f);
  AdamWHyper h;
  h.lr = 3e-4f;
  h.weight_decay = 0.05f;
  h.step = std::uniform_int_distribution<int64_t>(1, 500)(test::rng());
  Tensor p_d = param.device.clone(), m_d = m.device.clone(), v_d = v.device.clone();
  Tensor p_h = param.host.clone(), m_h = m.host.clone(), v_h = v.host.clone();
  ops::adamw_step(p_d, grad.device, m_d, v_d, h);
  cpu::adamw_step(p_h, grad.host, m_h, v_h, h);
  check_close("adamw_step param (step " + std::to_string(h.step) + ")", p_d, p_h, Precision::F32);
  check_close("adamw_step m", m_d, m_h, Precision::F32);
  check_close("adamw_step v", v_d, v_h, Precision::F32);

  const float decay = std::uniform_real_distribution<float>(0.9f, 0.9999f)(test::rng());
  Tensor ema_d = m.device.clone(), ema_h = m.host.clone();
  ops::ema_update(ema_d, param.device, decay);
  cpu::ema_update(ema_h, param.host, decay);
  check_close("ema_update", ema_d, ema_h, Precision::F32);
}

TEST_CASE("gpu multi-tensor AdamW and EMA read their step's constants from the device where given") {
  if (skip_without_gpu()) return;
  // The kernels are given step 1's constants and a decay of 0.5, but read step 3's and 0.9 from the device: the
  // result must be the CPU's at step 3 and 0.9.
  AdamWTwin twin(kShapes);
  const std::array<float, 7> step3 = adamw_step_constants(hyper_at(3));
  const Tensor constants = Tensor::from_vector({7}, std::vector<float>(step3.begin(), step3.end())).to(Device::CUDA);
  Tensor norm_d = Tensor::zeros({1}, DType::F32, Device::CUDA), norm_h = Tensor::zeros({1});
  ops::multi_tensor_adamw(twin.list_d, twin.grads_d, hyper_at(1), 1.0f, norm_d, constants);
  cpu::multi_tensor_adamw(twin.list_h, twin.grads_h, hyper_at(3), 1.0f, norm_h);
  twin.check_against_cpu("multi_tensor_adamw with step 3's constants on the device");

  std::vector<Tensor> ema_h, values_h, ema_d, values_d;
  for (const Shape& s : kShapes) {
    ema_h.push_back(test::random_tensor(s));
    values_h.push_back(test::random_tensor(s));
    ema_d.push_back(ema_h.back().to(Device::CUDA));
    values_d.push_back(values_h.back().to(Device::CUDA));
  }
  EmaTensors list_h, list_d;
  for (size_t i = 0; i < kShapes.size(); ++i) {
    list_h.ema.push_back(&ema_h[i]);
    list_h.values.push_back(&values_h[i]);
    list_d.ema.push_back(&ema_d[i]);
    list_d.values.push_back(&values_d[i]);
  }
  ops::multi_tensor_ema(list_d, 0.5f, Tensor::full({1}, 0.9f).to(Device::CUDA));
  cpu::multi_tensor_ema(list_h, 0.9f);
  for (size_t i = 0; i < kShapes.size(); ++i)
    check_close("multi_tensor_ema with the decay on the device", ema_d[i], ema_h[i], Precision::F32);
}
