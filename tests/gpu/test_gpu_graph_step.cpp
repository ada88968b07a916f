// GPU test of the training step recorded as a CUDA graph (apps/train/graph_step.h): its replays equal the same steps
// queued as they are, bit for bit in deterministic mode (the same kernels in the same order, fed the same seeds and
// constants), with dropout, instance dropout and drop-path drawing new masks every step; and a step that cannot be
// recorded (the attention-entropy term reads the attention back inside the step) leaves nothing behind. And the
// recording's memory (device::CudaGraph): planned from the first pass's trace, as large as the most its work had alive
// at once, given back with its last tensor.
#include <cstring>

#include "apps/train/graph_step.h"
#include "tensor/ops.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

const float kClassWeight[2] = {1.5f, 0.75f};
constexpr int64_t kBags = 2, kInstances = 4;

mil::ModelConfig small_model(bool bf16) {
  mil::ModelConfig c;
  c.encoder = {10, 4, 3, 4, 0.3f};
  c.encoder.bf16 = bf16;
  c.head.topk = 2;
  c.head.feature_dropout = 0.5f;
  c.head.instance_dropout = 0.25f;
  c.head.query_size = 8;
  return c;
}

// A model on the GPU in deterministic mode (bf16: mixed precision) with its AdamW (clipping on) and EMA, all from init
// seed 11.
struct Trainee {
  explicit Trainee(bool bf16) : model(small_model(bf16), 11) {
    model.to(Device::CUDA);
    MathMode mode;
    mode.deterministic = true;
    model.set_math_mode(mode);
    optimizer =
        std::make_unique<nn::AdamW>(model.parameters(), nn::AdamWConfig{1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1.0f});
    ema = std::make_unique<nn::Ema>(model, 0.99f);
  }
  mil::DualStreamMIL model;
  std::unique_ptr<nn::AdamW> optimizer;
  std::unique_ptr<nn::Ema> ema;
};

app::Batch random_batch() {
  app::Batch b;
  b.x = test::random_tensor({kBags * kInstances, 3, 16, 16, 4}).to(Device::CUDA);
  b.mask = Tensor::from_ints({kBags, kInstances}, {1, 1, 1, 1, 1, 1, 1, 0});
  b.target = Tensor::from_ints({kBags}, {1, 0});
  return b;
}

struct StepResult {
  float loss = 0.0f;
  std::vector<float> y;
};

StepResult eager_step(Trainee& t, const app::Batch& b, uint64_t seed, float lr, const mil::LossConfig& lc) {
  nn::StepRandom random{seed, 0};
  const mil::LossTargets targets = mil::loss_targets(b.target, kClassWeight, Device::CUDA);
  const mil::MilOutput out = t.model.forward(Variable(b.x), b.mask, 1.0f, random);
  Variable loss = mil::mil_loss(out, targets, lc);
  loss.backward();
  t.optimizer->step(lr);
  t.optimizer->zero_grad();
  t.ema->update(t.model);
  return {loss.value().item(), out.y.value().to_vector()};
}

// Every parameter, buffer, moment and average of the two trainees, bit for bit: the first difference, or "".
std::string first_difference(Trainee& a, Trainee& b) {
  std::vector<std::pair<std::string, std::pair<const Tensor*, const Tensor*>>> pairs;
  const auto pa = a.model.parameters(), pb = b.model.parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    pairs.push_back({pa[i].name, {&pa[i].variable->value(), &pb[i].variable->value()}});
  const auto ba = a.model.buffers(), bb = b.model.buffers();
  for (size_t i = 0; i < ba.size(); ++i) pairs.push_back({ba[i].name, {ba[i].tensor, bb[i].tensor}});
  const auto sa = a.optimizer->state(), sb = b.optimizer->state();
  for (size_t i = 0; i < sa.size(); ++i) pairs.push_back({sa[i].name, {sa[i].tensor, sb[i].tensor}});
  const auto ea = a.ema->state(), eb = b.ema->state();
  for (size_t i = 0; i < ea.size(); ++i) pairs.push_back({ea[i].name, {ea[i].tensor, eb[i].tensor}});
  for (const auto& [name, tensors] : pairs) {
    const std::vector<float> x = tensors.first->to_vector(), y = tensors.second->to_vector();
    if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0) return name;
  }
  return "";
}

}  // namespace

TEST_CASE("gpu training step as a CUDA graph: replays equal the steps queued as they are, bit for bit") {
  if (skip_without_gpu()) return;
  const mil::LossConfig lc{0.05f, 2.0f, 0.5f, 0.0f};
  for (const bool bf16 : {false, true}) {
    CAPTURE(bf16);
    Trainee queued(bf16), replayed(bf16);
    app::GraphStep graph(replayed.model, *replayed.optimizer, replayed.ema.get(), lc);
    const std::vector<float> lrs = {2e-4f, 1e-3f, 8e-4f, 5e-4f, 3e-4f};
    for (size_t step = 0; step < lrs.size(); ++step) {
      const app::Batch batch = random_batch();
      const uint64_t seed = 1000 + 17 * step;
      const StepResult expected = eager_step(queued, batch, seed, lrs[step], lc);
      StepResult got;
      if (step == 0) {  // the warm-up: plans and optimizer tables made outside any recording
        CHECK_FALSE(graph.takes(batch));
        got = eager_step(replayed, batch, seed, lrs[step], lc);
        graph.saw_eager_step(batch.x.shape());
      } else {
        REQUIRE(graph.takes(batch));
        const std::optional<app::GraphStep::Outputs> outputs =
            graph.run(batch, kClassWeight, nn::StepRandom{seed, 0}, 1.0f, lrs[step]);
        REQUIRE_MESSAGE(outputs.has_value(), "recording failed: " << graph.failure());
        got = {outputs->loss.item(), outputs->y.to_vector()};
      }
      std::printf("[gpu-graph] %s step %zu: loss queued %.9g, replayed %.9g\n", bf16 ? "bf16" : "fp32", step,
                  expected.loss, got.loss);
      CHECK(got.loss == expected.loss);
      CHECK(got.y == expected.y);
      CHECK_MESSAGE(first_difference(queued, replayed).empty(),
                    "step " << step << ": first difference in " << first_difference(queued, replayed));
    }
    CHECK(graph.recordings() == 1);
    const std::optional<device::CudaGraph::PlannedMemory> planned = graph.planned_memory();
    REQUIRE(planned.has_value());
    std::printf("[gpu-graph] %s step's recording: a range of %zu bytes planned from %zu alive at most\n",
                bf16 ? "bf16" : "fp32", planned->bytes, planned->most_alive);
    CHECK(planned->bytes >= planned->most_alive);
    CHECK(replayed.optimizer->steps() == queued.optimizer->steps());
    CHECK(replayed.ema->updates() == queued.ema->updates());
  }
}

TEST_CASE("gpu training step as a CUDA graph: a step that cannot be recorded leaves nothing behind") {
  if (skip_without_gpu()) return;
  const mil::LossConfig with_entropy{0.05f, 2.0f, 0.5f, 0.1f};
  Trainee queued(false), refused(false);
  app::GraphStep graph(refused.model, *refused.optimizer, refused.ema.get(), with_entropy);
  const app::Batch first = random_batch(), second = random_batch();
  eager_step(queued, first, 5, 1e-3f, with_entropy);
  eager_step(refused, first, 5, 1e-3f, with_entropy);
  graph.saw_eager_step(first.x.shape());
  REQUIRE(graph.takes(second));
  CHECK_FALSE(graph.run(second, kClassWeight, nn::StepRandom{6, 0}, 1.0f, 1e-3f).has_value());
  std::printf("[gpu-graph] refused recording: %s\n", graph.failure().c_str());
  CHECK_FALSE(graph.failure().empty());
  CHECK_FALSE(graph.takes(second));
  CHECK(refused.optimizer->steps() == 1);
  CHECK(refused.ema->updates() == 1);
  CHECK(first_difference(queued, refused).empty());
  // The same step queued as it is then runs as on a model that never tried.
  const StepResult expected = eager_step(queued, second, 6, 1e-3f, with_entropy);
  const StepResult got = eager_step(refused, second, 6, 1e-3f, with_entropy);
  CHECK(got.loss == expected.loss);
  CHECK_MESSAGE(first_difference(queued, refused).empty(),
                "after the queued step: " << first_difference(queued, refused));
}

TEST_CASE(
    "gpu CUDA graph memory: planned from the first pass, as large as the most alive at once, given back with its "
    "last tensor") {
  if (skip_without_gpu()) return;
  constexpr int64_t kFloats = int64_t{1} << 20;  // 4 MiB a tensor, a multiple of the mapping granularity (2 MiB)
  constexpr uint64_t kBytes = kFloats * sizeof(float);
  Tensor a = test::random_tensor({kFloats}).to(Device::CUDA);
  device::synchronize(Device::CUDA);
  const uint64_t before = device::memory_usage(Device::CUDA).used;
  auto graph = std::make_unique<device::CudaGraph>();
  Tensor tripled;
  graph->record([&] {
    Tensor doubled = ops::scale(a, 2.0f);
    const Tensor summed = ops::add(doubled, a);
    doubled = Tensor();                  // given back while recording: the next tensor takes its place
    tripled = ops::scale(summed, 3.0f);  // 9a, kept past the recording
  });
  const uint64_t recorded = device::memory_usage(Device::CUDA).used - before;
  std::printf("[gpu-graph] recording memory: 3 tensors of %llu bytes taken, at most 2 at once: %llu bytes backed\n",
              static_cast<unsigned long long>(kBytes), static_cast<unsigned long long>(recorded));
  CHECK(recorded == 2 * kBytes);
  CHECK(graph->planned_memory().bytes == 2 * kBytes);
  CHECK(graph->planned_memory().most_alive == 2 * kBytes);
  for (int launch = 0; launch < 2; ++launch) {
    const Tensor fresh = test::random_tensor({kFloats});
    a.copy_from(fresh);
    graph->launch();
    const std::vector<float> x = fresh.to_vector(), y = tripled.to_vector();
    size_t wrong = 0;
    for (size_t i = 0; i < x.size(); ++i) wrong += y[i] != (x[i] * 2.0f + x[i]) * 3.0f;
    CHECK_MESSAGE(wrong == 0, "launch " << launch << ": " << wrong << " of " << x.size() << " values differ from 9a");
  }
  graph.reset();  // the tensor kept past the recording still holds the graph's memory
  CHECK(device::memory_usage(Device::CUDA).used - before == 2 * kBytes);
  tripled = Tensor();
  CHECK(device::memory_usage(Device::CUDA).used == before);
}
