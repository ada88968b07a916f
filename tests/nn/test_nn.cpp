// nn/: AdamW and EMA against hand-computed steps, clipping, the schedule, ResNet shapes and names, the math
// mode's propagation, checkpoint round trip and every way a checkpoint file can be wrong.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "nn/checkpoint.h"
#include "nn/optim.h"
#include "nn/resnet3d.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {
// A module with one decayed weight and one bias, to drive the optimizers by hand.
struct TwoParams : nn::Module {
  Variable w{Tensor::from_vector({2}, {0.5f, -1.0f}), true};
  Variable b{Tensor::from_vector({1}, {0.25f}), true};
  Tensor stat = Tensor::from_vector({1}, {4.0f});
  TwoParams() {
    register_parameter("w", w, true);
    register_parameter("b", b, false);
    register_buffer("stat", stat);
  }
};
}  // namespace

TEST_CASE("AdamW: two steps match the hand computation, decay only on weights") {
  TwoParams m;
  nn::AdamWConfig cfg{0.1f, 0.9f, 0.999f, 1e-8f, 0.01f};
  nn::AdamW opt(m.parameters(), cfg);
  const std::vector<std::vector<float>> grads_w = {{0.2f, -0.4f}, {-0.1f, 0.3f}};
  const std::vector<float> grads_b = {1.0f, 2.0f};
  std::vector<double> w{0.5, -1.0}, mw{0, 0}, vw{0, 0};
  double b = 0.25, mb = 0, vb = 0;
  for (int t = 1; t <= 2; ++t) {
    m.w.accumulate_grad(Tensor::from_vector({2}, grads_w[t - 1]));
    m.b.accumulate_grad(Tensor::from_vector({1}, {grads_b[t - 1]}));
    opt.step(0.1f);
    opt.zero_grad();
    auto update = [&](double& p, double& mm, double& vv, double g, double wd) {
      mm = 0.9 * mm + 0.1 * g;
      vv = 0.999 * vv + 0.001 * g * g;
      const double mhat = mm / (1 - std::pow(0.9, t)), vhat = vv / (1 - std::pow(0.999, t));
      p -= 0.1 * (mhat / (std::sqrt(vhat) + 1e-8) + wd * p);
    };
    for (int i = 0; i < 2; ++i) update(w[i], mw[i], vw[i], grads_w[t - 1][i], 0.01);
    update(b, mb, vb, grads_b[t - 1], 0.0);
  }
  CHECK(max_rel_error("adamw weight", m.w.value().to_vector(), w, 1e-6) <= 1e-6);
  CHECK(max_rel_error("adamw bias (no decay)", m.b.value().to_vector(), {b}, 1e-6) <= 1e-6);
  CHECK(opt.steps() == 2);
}

TEST_CASE("EMA: warm-up decay min(d, (1+k)/(10+k)) over parameters and buffers") {
  TwoParams m, target;
  nn::Ema ema(m, 0.99f);
  double e = 0.5, s = 4.0;
  for (int k = 0; k < 3; ++k) {
    m.w.value().f32()[0] += 1.0f;
    m.stat.f32()[0] += 2.0f;
    const double d = std::min(0.99, (1.0 + k) / (10.0 + k));
    CHECK(ema.effective_decay() == doctest::Approx(d));
    ema.update(m);
    e = d * e + (1 - d) * m.w.value().f32()[0];
    s = d * s + (1 - d) * m.stat.f32()[0];
  }
  ema.copy_to(target);
  CHECK(max_rel_error("ema weight", {target.w.value().f32()[0]}, {e}, 1e-6) <= 1e-6);
  CHECK(max_rel_error("ema buffer", {target.stat.f32()[0]}, {s}, 1e-6) <= 1e-6);
}

TEST_CASE("gradient clipping scales to the global norm: the schedule warms up then decays") {
  TwoParams m;
  m.w.accumulate_grad(Tensor::from_vector({2}, {3.0f, 0.0f}));
  m.b.accumulate_grad(Tensor::from_vector({1}, {4.0f}));
  const float before = nn::clip_grad_norm(m.parameters(), 1.0f);
  CHECK(before == doctest::Approx(5.0f));
  CHECK(nn::grad_norm(m.parameters()) == doctest::Approx(1.0f).epsilon(1e-5));
  CHECK(m.w.grad().to_vector()[0] == doctest::Approx(0.6f).epsilon(1e-5));

  CHECK(nn::warmup_cosine_lr(1.0f, 0, 4, 104) == doctest::Approx(0.25f));
  CHECK(nn::warmup_cosine_lr(1.0f, 3, 4, 104) == doctest::Approx(1.0f));
  CHECK(nn::warmup_cosine_lr(1.0f, 54, 4, 104) == doctest::Approx(0.5f));
  CHECK(nn::warmup_cosine_lr(1.0f, 104, 4, 104) == doctest::Approx(0.0f));
}

TEST_CASE("ResNet-3D: embedding shape, block counts and parameter names") {
  for (int depth : {10, 18, 34}) {
    nn::InitEngine engine(1);
    nn::ResNet3D net({depth, 2, 3, 4, 0.0f}, engine);
    nn::StepRandom random;
    Variable y = net.forward(Variable(random_tensor({3, 3, 16, 16, 4})), random);
    CHECK(y.shape() == Shape{3, 16});
    int convs = 0;
    for (const auto& p : net.parameters()) convs += p.name.find("conv") != std::string::npos;
    int blocks = 0;
    for (int n : nn::blocks_per_stage(depth)) blocks += n;
    CHECK(convs == 1 + 2 * blocks + 3);  // stem, two per block, three projections
  }
  nn::InitEngine engine(1);
  nn::ResNet3D net({18, 2, 1, 4, 0.0f}, engine);
  const auto params = net.parameters();
  CHECK(params.front().name == "stem.conv.weight");
  CHECK(params.front().variable->shape() == Shape{2, 1, 7, 7, 4});  // S = 1: kernel depth 1
  bool has_projection = false;
  for (const auto& p : params) has_projection |= p.name == "layer2.0.downsample.conv.weight";
  CHECK(has_projection);
}

TEST_CASE("math mode: a fresh module holds the default, set_math_mode reaches every module under it") {
  nn::InitEngine engine(1);
  nn::ResNet3D net({10, 2, 1, 4, 0.0f}, engine);
  int modules = 0;
  net.visit([&](nn::Module& m) {
    CHECK(m.math_mode().allow_tf32);
    CHECK_FALSE(m.math_mode().deterministic);
    ++modules;
  });
  CHECK(modules > 1);
  MathMode strict;
  strict.allow_tf32 = false;
  strict.deterministic = true;
  strict.conv_space_to_depth = ConvFolding::never;
  strict.conv16_forward = ConvKernel::cudnn;
  net.set_math_mode(strict);
  net.visit([&](nn::Module& m) {
    CHECK_FALSE(m.math_mode().allow_tf32);
    CHECK(m.math_mode().deterministic);
    CHECK(m.math_mode().conv_space_to_depth == ConvFolding::never);
    CHECK(m.math_mode().conv16_forward == ConvKernel::cudnn);
  });
}

TEST_CASE("checkpoint: a write that fails (a full disk) leaves the old file and no temporary file behind") {
  const std::string dir = scratch("full_disk");
  TwoParams m;
  nn::Checkpoint ckpt;
  ckpt.metadata = std::string(1 << 16, ' ');  // larger than the file-size limit below
  nn::add_parameters(ckpt, "model.", m.parameters());
  const std::string path = dir + "/last.ckpt";
  std::ofstream(path) << "the previous checkpoint";
  // The child writes under a 4 KiB file-size limit, which fails a write the way a full disk does (EFBIG; the
  // signal that would end the process is ignored).
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{4096, 4096};
    setrlimit(RLIMIT_FSIZE, &limit);
    try {
      nn::save_checkpoint(path, ckpt);
    } catch (const FormatError&) {
      _exit(0);
    }
    _exit(1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // the failure was reported as the checkpoint's error
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
  std::ifstream in(path);
  std::string kept;
  std::getline(in, kept);
  CHECK(kept == "the previous checkpoint");
}

TEST_CASE("checkpoint: round trip, and clear errors for wrong, damaged, old or mismatched files") {
  const std::string dir = scratch("checkpoints");
  TwoParams m;
  nn::Checkpoint ckpt;
  ckpt.metadata = R"({"epoch": 3})";
  nn::add_parameters(ckpt, "model.", m.parameters());
  nn::add_state(ckpt, "model.", m.buffers());
  const std::string path = dir + "/a.ckpt";
  nn::save_checkpoint(path, ckpt);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  TwoParams other;
  other.w.value().fill(9.0f);
  other.stat.fill(9.0f);
  const nn::Checkpoint loaded = nn::load_checkpoint(path);
  CHECK(loaded.metadata == ckpt.metadata);
  nn::restore_parameters(loaded, "model.", other.parameters());
  nn::restore_state(loaded, "model.", other.buffers());
  CHECK(other.w.value().to_vector() == m.w.value().to_vector());
  CHECK(other.stat.to_vector() == m.stat.to_vector());

  auto bytes_of = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  auto write = [](const std::string& p, const std::string& data) { std::ofstream(p, std::ios::binary) << data; };
  auto message_of = [](const std::string& p) {
    try {
      nn::load_checkpoint(p);
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string good = bytes_of(path);
  std::string damaged = good;
  damaged[good.size() / 2] ^= 0x5a;
  write(dir + "/damaged.ckpt", damaged);
  CHECK(message_of(dir + "/damaged.ckpt").find("damaged") != std::string::npos);
  write(dir + "/truncated.ckpt", good.substr(0, good.size() - 9));
  CHECK(message_of(dir + "/truncated.ckpt") != "no error");
  std::string old_version = good;
  old_version[8] = 7;
  write(dir + "/version.ckpt", old_version);
  CHECK(message_of(dir + "/version.ckpt").find("version 7") != std::string::npos);
  write(dir + "/other.ckpt", "PK\x03\x04 not a checkpoint at all");
  CHECK(message_of(dir + "/other.ckpt").find("bad magic") != std::string::npos);
  CHECK(message_of(dir + "/missing.ckpt").find("cannot open") != std::string::npos);

  nn::Checkpoint wrong_shape;
  wrong_shape.tensors.push_back({"model.w", Tensor::zeros({3})});
  CHECK_THROWS_WITH_AS(nn::restore_parameters(wrong_shape, "model.", other.parameters()), doctest::Contains("expects"),
                       FormatError);
  CHECK_THROWS_WITH_AS(nn::restore_state(wrong_shape, "model.", other.buffers()), doctest::Contains("missing"),
                       FormatError);
  std::filesystem::remove_all(dir);
}
