// Data-parallel training on the CPU, ranks as threads: the gradient-ready hook, the counter sharding of
// StepRandom, synchronised batch norm, and a whole step of two ranks against one process holding the batch.
#include <algorithm>
#include <memory>
#include <thread>

#include "dist/thread_communicator.h"
#include "mil/dual_stream.h"
#include "nn/data_parallel.h"
#include "nn/sync_batchnorm.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("autograd: a parameter's gradient hook fires once, after the last use of the parameter") {
  Variable w(random_tensor({5}), true), x(random_tensor({5}), false);
  int fired = 0;
  std::vector<float> grad_when_fired;
  w.on_grad_ready([&] {
    ++fired;
    grad_when_fired = w.grad().to_vector();
  });
  // w is used by two products: its gradient is x + 2x = 3x only after both have run.
  Variable y = fn::add(fn::mul(w, x), fn::scale(fn::mul(w, x), 2.0f));
  y.backward(Tensor::full({5}, 1.0f));
  CHECK(fired == 1);
  const std::vector<float> xv = x.value().to_vector();
  REQUIRE(grad_when_fired.size() == xv.size());
  for (size_t i = 0; i < xv.size(); ++i) CHECK(grad_when_fired[i] == doctest::Approx(3.0f * xv[i]).epsilon(1e-6));
  Variable activation = fn::mul(w, x);
  CHECK_THROWS_AS(activation.on_grad_ready([] {}), Error);
}

TEST_CASE("StepRandom: the ranks' shares of a step's counters are what one process with the whole step takes") {
  nn::StepRandom whole{11, 5};
  const uint64_t whole_first = whole.take(6 * 4);  // 6 bags of 4 instances
  const uint64_t whole_second = whole.take(6 * 10);
  // Ranks of 2, 3 and 1 bags: each one's first counter sits at its first bag.
  const int64_t firsts[3] = {0, 2, 5}, counts[3] = {2, 3, 1};
  for (int r = 0; r < 3; ++r) {
    nn::StepRandom share{11, 5, firsts[r], counts[r], 6};
    CHECK(share.take(counts[r] * 4) == whole_first + firsts[r] * 4);
    CHECK(share.take(counts[r] * 10) == whole_second + firsts[r] * 10);
    CHECK(share.next == whole.next);
  }
  nn::StepRandom uneven{11, 0, 0, 2, 6};
  CHECK_THROWS_AS(uneven.take(5), Error);
}

TEST_CASE("synchronised batch norm over one rank equals the fused batch norm + ReLU (values and every gradient)") {
  auto group = std::make_shared<dist::ThreadGroup>(1);
  dist::ThreadCommunicator alone(group, 0);
  const int64_t samples = 3, channels = 5;
  const Tensor x = random_tensor({samples, 2, 3, 4, channels}, -2.0f, 3.0f), residual = random_tensor(x.shape());
  const Tensor gamma = random_tensor({channels}, 0.5f, 1.5f), beta = random_tensor({channels});
  const Tensor factor = random_tensor({samples}, 0.5f, 2.0f), seed = random_tensor(x.shape());
  for (const bool relu : {false, true}) {
    struct Result {
      std::vector<float> y, dx, dgamma, dbeta, dresidual, running_mean, running_var;
    };
    auto run = [&](bool synchronised) {
      Variable xv(x.clone(), true), g(gamma.clone(), true), b(beta.clone(), true), r(residual.clone(), true);
      Tensor running_mean = random_tensor({channels}), running_var = random_tensor({channels}, 0.5f, 2.0f);
      Variable y;
      if (synchronised)
        y = nn::synchronised_batchnorm(xv, g, b, running_mean, running_var, 0.1f, 1e-5f,
                                       relu ? std::optional<nn::ReluBranch>(nn::ReluBranch{r, factor}) : std::nullopt,
                                       alone);
      else if (relu)
        y = fn::batchnorm_relu(xv, g, b, running_mean, running_var, true, 0.1f, 1e-5f, r, factor);
      else
        y = fn::batchnorm(xv, g, b, running_mean, running_var, true, 0.1f, 1e-5f);
      y.backward(seed);
      return Result{y.value().to_vector(),
                    xv.grad().to_vector(),
                    g.grad().to_vector(),
                    b.grad().to_vector(),
                    relu ? r.grad().to_vector() : std::vector<float>{},
                    running_mean.to_vector(),
                    running_var.to_vector()};
    };
    // Same random running statistics for both: draw them from the same generator state.
    const auto state = rng();
    const Result plain = run(false);
    rng() = state;
    const Result synced = run(true);
    const std::string tag = relu ? "relu: " : "plain: ";
    // fp32: the synchronised path rounds mean and invstd to float before combining them in double and
    // adds its correction in a second pass; 1e-5 of the scale bounds that.
    const double tol = 1e-5;
    CHECK(max_rel_error(tag + "y", synced.y, to_double(plain.y), tol) <= tol);
    CHECK(max_rel_error(tag + "dx", synced.dx, to_double(plain.dx), tol) <= tol);
    CHECK(max_rel_error(tag + "dgamma", synced.dgamma, to_double(plain.dgamma), tol) <= tol);
    CHECK(max_rel_error(tag + "dbeta", synced.dbeta, to_double(plain.dbeta), tol) <= tol);
    CHECK(max_rel_error(tag + "running mean", synced.running_mean, to_double(plain.running_mean), tol) <= tol);
    CHECK(max_rel_error(tag + "running var", synced.running_var, to_double(plain.running_var), tol) <= tol);
    if (relu) CHECK(max_rel_error(tag + "dresidual", synced.dresidual, to_double(plain.dresidual), tol) <= tol);
  }
}

namespace {

mil::ModelConfig stochastic_tiny_config() {
  mil::ModelConfig c;
  c.encoder = {10, 2, 3, 4, 0.3f};  // drop-path on: the masks must follow the bags to their ranks
  c.head.pooling = mil::Pooling::Soft;
  c.head.attention = mil::Attention::Dsmil;
  c.head.feature_dropout = 0.2f;
  c.head.instance_dropout = 0.2f;
  c.head.query_size = 8;
  return c;
}

struct StepResult {
  double loss = 0;
  std::vector<float> grads;  // every parameter's, concatenated
  size_t buckets = 0, started_in_backward = 0;
};

void append(std::vector<float>& all, const std::vector<float>& more) {
  all.insert(all.end(), more.begin(), more.end());
}

// One step of the whole batch in one process, and the same step on ranks as threads.
struct StepComparison {
  StepResult whole;
  std::vector<StepResult> per_rank;
};

StepComparison whole_and_ranks(const Tensor& x, int64_t bags, int64_t n, int world) {
  const float class_weight[2] = {1.5f, 0.75f};
  const mil::LossConfig lc{0.1f, 1.0f, 0.5f, 0.2f};
  const uint64_t init_seed = run_seed();
  const std::vector<int> mask_values = {1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1}, targets = {1, 0, 0, 1};
  StepComparison out;
  {
    mil::DualStreamMIL model(stochastic_tiny_config(), init_seed);
    nn::StepRandom random{7, 0};
    Variable loss = mil::mil_loss(model.forward(Variable(x), Tensor::from_ints({bags, n}, mask_values), 0.5f, random),
                                  Tensor::from_ints({bags}, targets), class_weight, lc);
    loss.backward();
    out.whole.loss = loss.value().item();
    for (const nn::NamedParameter& p : model.parameters()) append(out.whole.grads, p.variable->grad().to_vector());
  }
  auto group = std::make_shared<dist::ThreadGroup>(world);
  out.per_rank.resize(world);
  auto rank_step = [&](int rank) {
    dist::ThreadCommunicator comm(group, rank);
    mil::DualStreamMIL model(stochastic_tiny_config(), init_seed);
    nn::synchronise_batchnorm(model, &comm);
    // Small buckets: several, so that some start while the backward pass still runs.
    nn::GradientReducer reducer(model.parameters(), comm, 16 << 10);
    const int64_t local = bags / world, first = rank * local;
    nn::StepRandom random{7, 0, first, local, bags};
    mil::StepShare share{0.0, bags};
    for (int t : targets) share.weight_sum += class_weight[t];
    const std::vector<int> my_mask(mask_values.begin() + first * n, mask_values.begin() + (first + local) * n),
        my_targets(targets.begin() + first, targets.begin() + first + local);
    Variable loss = mil::mil_loss(model.forward(Variable(x.narrow0(first * n, (first + local) * n).clone()),
                                                Tensor::from_ints({local, n}, my_mask), 0.5f, random),
                                  Tensor::from_ints({local}, my_targets), class_weight, lc, share);
    loss.backward();
    reducer.finish();
    StepResult& result = out.per_rank[rank];
    result.loss = comm.sum({loss.value().item()})[0];
    for (const nn::NamedParameter& p : model.parameters()) append(result.grads, p.variable->grad().to_vector());
    result.buckets = reducer.bucket_count();
    result.started_in_backward = reducer.started_during_backward();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(rank_step, r);
  for (std::thread& t : threads) t.join();
  return out;
}

double worst_rank_gradient_error(const StepComparison& step, double tol) {
  double worst = 0;
  for (size_t r = 0; r < step.per_rank.size(); ++r)
    worst = std::max(worst, max_rel_error("rank " + std::to_string(r) + " gradients", step.per_rank[r].grads,
                                          to_double(step.whole.grads), tol));
  return worst;
}

}  // namespace

TEST_CASE("data parallel on threads: 2 ranks of 2 bags give the loss and gradients of one process with 4 bags") {
  const int64_t bags = 4, n = 3;
  const int world = 2;
  // fp32 sums in another order (two partial batches, statistics combined in double): 1e-4 of the scale.
  const double tol = 1e-4;
  StepComparison step = whole_and_ranks(random_tensor({bags * n, 3, 12, 12, 4}, -2.0f, 2.0f), bags, n, world);
  double worst = worst_rank_gradient_error(step, tol);
  if (worst > tol) {
    // A ReLU whose input lies within fp32 rounding of zero can take the other side when the batch statistics
    // are summed in another order, and then the encoder's gradients below it differ by far more than rounding
    // (about 1 draw in 60; seed 1770538556 flips one element after layer4.0.bn1). Such an input is redrawn once:
    // a fault in sharding, bucketing or synchronised statistics fails on every draw.
    MESSAGE("rank gradients differ on this input; redrawing it once (a ReLU input at zero flips with summation order)");
    step = whole_and_ranks(random_tensor({bags * n, 3, 12, 12, 4}, -2.0f, 2.0f), bags, n, world);
    worst = worst_rank_gradient_error(step, tol);
  }
  CHECK(worst <= tol);
  for (int r = 0; r < world; ++r) {
    CHECK(step.per_rank[r].loss == doctest::Approx(step.whole.loss).epsilon(1e-5));
    CHECK(step.per_rank[r].buckets > 1);
    CHECK(step.per_rank[r].started_in_backward > 0);
    CHECK(step.per_rank[r].grads == step.per_rank[0].grads);  // every rank holds the same summed gradient
  }
}
