// `dsmil parity-dump`: one training-mode forward and backward of the model on random bags, written as a
// bundle of .npy files (tools/torch_twin/BUNDLE.md) for the PyTorch twin to recompute and compare:
// parameters, buffers before and after, inputs, logits, loss, embeddings, margins, selection,
// attention and every parameter gradient. Dropouts are 0 so that both sides compute the same function.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/command_registry.h"
#include "apps/train/trainer.h"
#include "mil/dual_stream.h"

namespace dsmil::app {
namespace {

namespace fs = std::filesystem;

struct ParityArgs {
  std::string out, device = "auto", precision = "fp32", pooling = "topk", attention = "gated";
  int depth = 10, width = 8, slab = 3, size = 32, bags = 2, instances = 6, topk = 3;
  float tau = 0.5f, attention_temperature = 0.7f, label_smoothing = 0.2f, focal_gamma = 2.0f;
  uint64_t seed = 0;
};

// NumPy .npy version 1.0: magic, header length, a dict literal padded to 64 bytes, raw little-endian data.
void write_npy(const fs::path& path, const Tensor& t) {
  const Tensor host = t.to(Device::CPU);
  std::string shape = "(";
  for (int64_t d : host.shape()) shape += std::to_string(d) + ",";
  shape += ")";
  const char* descr = host.dtype() == DType::I32 ? "<i4" : host.dtype() == DType::U8 ? "|u1" : "<f4";
  const Tensor data = host.dtype() == DType::BF16 ? Tensor::from_vector(host.shape(), host.to_vector()) : host;
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t length = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&length), 2);
  out << header;
  out.write(static_cast<const char*>(data.raw()), static_cast<std::streamsize>(data.bytes()));
  if (!out) throw FormatError("parity-dump: cannot write " + path.string());
}

void run_parity_dump(const ParityArgs& a) {
  const Device device = resolve_device(a.device);
  if (a.precision == "bf16" && device == Device::CPU) throw Error("parity-dump: bf16 needs the CUDA backend");
  mil::ModelConfig config;
  config.encoder = {a.depth, a.width, a.slab, 4, 0.0f, a.precision == "bf16"};
  config.head.pooling = mil::parse_pooling(a.pooling);
  config.head.attention = mil::parse_attention(a.attention);
  config.head.topk = a.topk;
  config.head.attention_temperature = a.attention_temperature;
  config.head.feature_dropout = 0.0f;
  config.head.instance_dropout = 0.0f;
  const uint64_t seed = a.seed ? a.seed : std::random_device{}();
  mil::DualStreamMIL model(config, seed);
  MathMode mode;
  mode.allow_tf32 = a.precision == "tf32";
  model.set_math_mode(mode);
  std::mt19937_64 engine(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> around_one(0.5f, 1.5f);
  // Batch-norm scales, shifts and running statistics away from their initial 1/0/0/1, so that a swapped
  // or ignored one shows.
  auto randomize = [&](Tensor& t, bool positive) {
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = positive ? around_one(engine) : 0.1f * normal(engine);
  };
  for (const auto& p : model.parameters())
    if (p.name.find(".bn") != std::string::npos || p.name.find("downsample.bn") != std::string::npos)
      randomize(p.variable->value(), p.name.ends_with(".weight"));
  for (const auto& b : model.buffers()) randomize(*b.tensor, b.name.ends_with("running_var"));
  model.to(device);

  const Shape x_shape{int64_t{a.bags} * a.instances, a.slab, a.size, a.size, 4};
  std::vector<float> x(shape_numel(x_shape));
  for (float& v : x) v = normal(engine);
  std::vector<int32_t> mask(a.bags * a.instances, 1), target(a.bags);
  for (int b = 0; b < a.bags; ++b) target[b] = (b + 1) % 2;
  if (a.instances > 2) mask[a.bags * a.instances - 1] = 0;  // the last bag has one padding instance
  const Tensor x_tensor = Tensor::from_vector(x_shape, x), mask_tensor = Tensor::from_ints({a.bags, a.instances}, mask),
               target_tensor = Tensor::from_ints({a.bags}, target);
  const float class_weight[2] = {1.5f, 0.75f};
  const mil::LossConfig loss_config{a.label_smoothing, a.focal_gamma, 0.5f};

  const fs::path root(a.out);
  for (const char* folder : {"params", "buffers", "buffers_after", "inputs", "outputs", "grads"})
    fs::create_directories(root / folder);
  for (const auto& p : model.parameters()) write_npy(root / "params" / (p.name + ".npy"), p.variable->value());
  for (const auto& b : model.buffers()) write_npy(root / "buffers" / (b.name + ".npy"), *b.tensor);

  nn::StepRandom random{seed, 0};
  const mil::MilOutput out = model.forward(Variable(x_tensor.to(device)), mask_tensor, a.tau, random);
  Variable loss = mil::mil_loss(out, target_tensor, class_weight, loss_config);
  loss.backward();

  for (const auto& b : model.buffers()) write_npy(root / "buffers_after" / (b.name + ".npy"), *b.tensor);
  for (const auto& p : model.parameters())
    write_npy(root / "grads" / (p.name + ".npy"),
              p.variable->has_grad() ? p.variable->grad() : Tensor::zeros(p.variable->shape()));
  write_npy(root / "inputs" / "x.npy", x_tensor);
  write_npy(root / "inputs" / "mask.npy", mask_tensor);
  write_npy(root / "inputs" / "target.npy", target_tensor);
  write_npy(root / "outputs" / "y1.npy", out.y1.value());
  write_npy(root / "outputs" / "y2.npy", out.y2.value());
  write_npy(root / "outputs" / "y.npy", out.y.value());
  write_npy(root / "outputs" / "loss.npy", loss.value());
  write_npy(root / "outputs" / "h.npy", out.embeddings);
  write_npy(root / "outputs" / "margins.npy", out.margins);
  write_npy(root / "outputs" / "selection.npy", out.selection);
  write_npy(root / "outputs" / "attention.npy", out.attention);
  const nlohmann::json cfg = {{"depth", a.depth},
                              {"width", a.width},
                              {"slab_depth", a.slab},
                              {"pooling", a.pooling},
                              {"topk", a.topk},
                              {"attention", a.attention},
                              {"attention_temperature", a.attention_temperature},
                              {"tau", a.tau},
                              {"label_smoothing", a.label_smoothing},
                              {"focal_gamma", a.focal_gamma},
                              {"stream_weight", 0.5},
                              {"class_weight", {class_weight[0], class_weight[1]}},
                              {"bags", a.bags},
                              {"instances", a.instances},
                              {"height", a.size},
                              {"width_px", a.size},
                              {"precision", a.precision},
                              {"device", device_name(device)},
                              {"seed", seed}};
  std::ofstream(root / "config.json") << cfg.dump(1) << "\n";
  std::printf("parity bundle: %s (%s %s/%s, loss %.6f, %s, --seed %llu)\n", root.string().c_str(), device_name(device),
              a.pooling.c_str(), a.attention.c_str(), loss.value().item(), a.precision.c_str(),
              static_cast<unsigned long long>(seed));
}

const RegisterCommand parity_command{
    "parity-dump", 90, [](CLI::App& root) {
      auto a = std::make_shared<ParityArgs>();
      CLI::App* cmd = root.add_subcommand(
          "parity-dump", "write one forward/backward as .npy files for the PyTorch twin (tools/torch_twin)");
      cmd->add_option("--out", a->out, "bundle folder")->required();
      cmd->add_option("--device", a->device, "cpu | cuda | auto")->capture_default_str();
      cmd->add_option("--precision", a->precision, "fp32 (strict) | tf32 | bf16 (mixed)")->capture_default_str();
      cmd->add_option("--pooling", a->pooling, "max | topk | soft")->capture_default_str();
      cmd->add_option("--attention", a->attention, "dsmil | gated")->capture_default_str();
      cmd->add_option("--depth", a->depth, "ResNet depth")->capture_default_str();
      cmd->add_option("--width", a->width, "ResNet width")->capture_default_str();
      cmd->add_option("--slab", a->slab, "slices per slab")->capture_default_str();
      cmd->add_option("--size", a->size, "slab height and width")->capture_default_str();
      cmd->add_option("--bags", a->bags, "bags")->capture_default_str();
      cmd->add_option("--instances", a->instances, "instances per bag")->capture_default_str();
      cmd->add_option("--topk", a->topk, "K of top-k pooling")->capture_default_str();
      cmd->add_option("--tau", a->tau, "soft pooling temperature")->capture_default_str();
      cmd->add_option("--attention-temperature", a->attention_temperature, "T_att")->capture_default_str();
      cmd->add_option("--seed", a->seed, "0 = a fresh random seed");
      cmd->callback([a] { run_parity_dump(*a); });
    }};

}  // namespace
}  // namespace dsmil::app
