// `dsmil export CHECKPOINT|FOLD_DIR --format safetensors [--out FILE]`: a checkpoint's model (a fold directory
// stands for the model its CV chose) as a safetensors file (https://github.com/huggingface/safetensors), for
// PyTorch users. Its tensors are the state_dict of the PyTorch twin (tools/torch_twin/twin.py DualStreamMIL, which
// keeps dsmil's parameter and buffer names): every parameter and batch-norm running statistic, conv weights turned
// from dsmil's [out, kD, kH, kW, in] into PyTorch's [out, in, kD, kH, kW] (twin.py from_cpp_layout). Its
// __metadata__ holds what running the model needs beyond the weights: the architecture, the input (grid,
// modalities, slabs, how the evaluation bag is drawn), the output rule, the calibrated threshold when the
// checkpoint has one, whether it is its fold's chosen model, the training config, and the builds that trained and
// exported it. tools/torch_twin/predict_export.py runs such a file.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "apps/command_registry.h"
#include "apps/provenance.h"
#include "apps/report/run_dir.h"
#include "apps/train/trainer.h"
#include "data/cases.h"
#include "mil/dual_stream.h"
#include "nn/layers.h"

namespace dsmil::app {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct ExportArgs {
  std::string source, format, out;
};

// The checkpoint to export, and how it stands to its fold's choice of model (fold.json chosen_model): a fold's
// best.ckpt and best_ema.ckpt both carry a calibrated threshold, and only one of them is the model the CV
// evaluated, so the user is told which one the file holds.
struct ExportSource {
  fs::path checkpoint;
  std::string fold_choice;  // empty outside a finished fold's directory
};

ExportSource export_source(const fs::path& given) {
  const bool fold_dir = fs::is_directory(given);
  const fs::path dir = fold_dir ? given : given.parent_path();
  const fs::path fold_json = dir / "fold.json";
  if (!fs::is_regular_file(fold_json)) {
    if (fold_dir)
      throw Error(fmt::format("dsmil export: {} holds no fold.json: give a checkpoint or a finished fold's directory",
                              given.string()));
    return {given, ""};
  }
  const report::FoldInfo info = report::read_fold_json(fold_json);
  const fs::path chosen = report::chosen_checkpoint(dir, info);
  const std::string choice =
      fmt::format("fold {}'s chosen model: {} ({} model of epoch {}, {})", info.fold, chosen.filename().string(),
                  info.chosen_model, info.best_epoch, fold_json.string());
  if (fold_dir) return {chosen, choice};
  if (fs::exists(chosen) && fs::equivalent(chosen, given)) return {given, choice};
  return {given, fmt::format("not {}", choice)};
}

// One tensor of the file, on the host, in the layout PyTorch's state_dict holds it.
struct ExportedTensor {
  std::string name;
  Tensor value;
};

// dsmil's conv weight w[out, kD, kH, kW, in] (cuDNN's KTRSC) as PyTorch's Conv3d weight [out, in, kD, kH, kW].
Tensor to_pytorch_conv_layout(const Tensor& w) {
  const Shape& s = w.shape();
  const int64_t out = s[0], taps = s[1] * s[2] * s[3], in = s[4];
  Tensor t = Tensor::empty({out, in, s[1], s[2], s[3]});
  const float* src = w.f32();
  float* dst = t.f32();
  for (int64_t k = 0; k < out; ++k)
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t c = 0; c < in; ++c) dst[(k * in + c) * taps + tap] = src[(k * taps + tap) * in + c];
  return t;
}

// The model's parameters, then its buffers, in dsmil's order. Every 5-D tensor is a conv weight (the rule of
// twin.py from_cpp_layout); a model loaded on the CPU holds float32 tensors only (bf16 training keeps fp32
// master weights).
std::vector<ExportedTensor> pytorch_state(mil::DualStreamMIL& model) {
  std::vector<ExportedTensor> state;
  for (const nn::NamedParameter& p : model.parameters()) state.push_back({p.name, p.variable->value()});
  for (const nn::NamedBuffer& b : model.buffers()) state.push_back({b.name, *b.tensor});
  for (ExportedTensor& t : state) {
    check_dtype("export", t.value, DType::F32, t.name.c_str());
    if (t.value.ndim() == 5) t.value = to_pytorch_conv_layout(t.value);
  }
  return state;
}

// The safetensors layout: u64 little-endian N, an N-byte JSON header {name: {"dtype", "shape", "data_offsets":
// [begin, end)}, "__metadata__": {string: string}}, then the tensors' bytes back to back (C order,
// little-endian like the host, as dsmil's checkpoints), offsets counted from the end of the header. The header
// is padded with spaces to a multiple of 8 bytes so that every float tensor starts aligned, as the reference
// writer does.
std::string safetensors_file(const std::vector<ExportedTensor>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  json header = {{"__metadata__", metadata}};
  uint64_t offset = 0;
  for (const ExportedTensor& t : tensors) {
    header[t.name] = {{"dtype", "F32"},
                      {"shape", t.value.shape()},
                      {"data_offsets", json::array({offset, offset + t.value.bytes()})}};
    offset += t.value.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = text.size();
  std::string file(reinterpret_cast<const char*>(&header_bytes), sizeof header_bytes);
  file += text;
  file.reserve(file.size() + offset);
  for (const ExportedTensor& t : tensors) file.append(static_cast<const char*>(t.value.raw()), t.value.bytes());
  return file;
}

// The batch norms' eps and momentum, one pair for the whole model (a mix would need a per-layer record).
std::pair<float, float> batch_norm_constants(mil::DualStreamMIL& model) {
  std::optional<std::pair<float, float>> constants;
  model.visit([&](nn::Module& m) {
    const auto* bn = dynamic_cast<const nn::BatchNorm3d*>(&m);
    if (!bn) return;
    if (constants && *constants != std::pair{bn->eps, bn->momentum})
      throw Error("dsmil export: the model's batch norms differ in eps or momentum");
    constants = std::pair{bn->eps, bn->momentum};
  });
  if (!constants) throw Error("dsmil export: the model has no batch norm");
  return *constants;
}

std::map<std::string, std::string> export_metadata(const ExportSource& source, const TrainedModel& trained) {
  const fs::path& checkpoint = source.checkpoint;
  const json& checkpoint_meta = trained.metadata;
  const mil::ModelConfig& model = trained.model->config();
  const RunConfig& config = trained.config;
  const float tau = soft_pooling_tau(config, trained.epoch - 1);
  // The fields of twin.py TwinConfig that fix the evaluated function: TwinConfig(**json.loads(...)) builds it.
  const json architecture = {{"depth", model.encoder.depth},
                             {"width", model.encoder.width},
                             {"slab_depth", model.encoder.slab_depth},
                             {"in_channels", model.encoder.in_channels},
                             {"pooling", mil::pooling_name(model.head.pooling)},
                             {"topk", model.head.topk},
                             {"attention", mil::attention_name(model.head.attention)},
                             {"attention_temperature", model.head.attention_temperature},
                             {"query_size", model.head.query_size},
                             {"tau", tau}};
  const auto [bn_eps, bn_momentum] = batch_norm_constants(*trained.model);
  const Provenance build = current_provenance();
  std::map<std::string, std::string> m = {
      {"format", "dsmil3d DualStreamMIL-3D weights"},
      {"tensor_names",
       "the state_dict names of the PyTorch twin tools/torch_twin/twin.py DualStreamMIL (dsmil's own names): every "
       "parameter and batch-norm running_mean / running_var; PyTorch's num_batches_tracked counters are not stored "
       "(unused at a set momentum), so load with load_state_dict(..., strict=False)"},
      {"conv_weight_layout", "[out, in, kD, kH, kW] (PyTorch Conv3d; dsmil stores [out, kD, kH, kW, in])"},
      {"model", architecture.dump()},
      {"batch_norm_eps", fmt::format("{}", bn_eps)},
      {"batch_norm_momentum", fmt::format("{}", bn_momentum)},
      {"modalities", fmt::format("{}", fmt::join(data::kModalityNames, ","))},
      {"grid", config.grid},
      {"slab_depth", std::to_string(config.slab_depth)},
      {"eval_instances", std::to_string(config.eval_instances)},
      {"input",
       fmt::format("x[B*n, {}, S, H, W] float32 (dsmil holds it as [B*n, S, H, W, {}]): n = eval_instances slabs of "
                   "S = slab_depth axial slices of the preprocessed grid D,H,W (dsmil preprocess: brain mask, crop, "
                   "per-modality z-score over the brain, trilinear resampling, 0 outside the brain), channels in the "
                   "order of `modalities`; mask[B, n] bool, padding instances are zero slabs with mask false",
                   model.encoder.in_channels, model.encoder.in_channels)},
      {"eval_bag",
       "slab starts z whose slices z .. z+S-1 hold brain, in ascending order; `fixed` sampling keeps eval_instances of "
       "them at round-half-up(i * (count - 1) / (n - 1)), i = 0 .. n-1 (all when count <= n; the middle one when n = "
       "1); no augmentation"},
      {"output", "y = (y1 + y2) / 2, the bag logits [LGG, HGG]; p(HGG) = softmax(y)[1]"},
      {"dsmil_version", build.version},
      {"dsmil_commit", build.commit},
      {"dsmil_dirty", build.dirty ? (*build.dirty ? "true" : "false") : "unknown"},
      {"checkpoint", fs::absolute(checkpoint).lexically_normal().string()},
      {"checkpoint_sha256", sha256_file_hex(checkpoint)},
      {"epoch", std::to_string(trained.epoch)},
      {"config", checkpoint_meta.at("config").get<std::string>()},
  };
  if (trained.threshold) {
    m["threshold"] = fmt::format("{:.17g}", trained.threshold->value);
    m["threshold_method"] = trained.threshold->method;
    m["threshold_rule"] = fmt::format("HGG when p(HGG) >= threshold; threshold {}", trained.threshold->source);
    m["threshold_bags"] = checkpoint_meta.at("threshold_bags").dump();
  }
  if (checkpoint_meta.contains("provenance")) m["training_provenance"] = checkpoint_meta.at("provenance").dump();
  if (!source.fold_choice.empty()) m["fold_choice"] = source.fold_choice;
  return m;
}

void run_export(const ExportArgs& a) {
  const ExportSource source = export_source(a.source);
  const fs::path out = a.out.empty() ? fs::path(source.checkpoint).replace_extension(".safetensors") : fs::path(a.out);
  const TrainedModel trained = load_trained_model(source.checkpoint, Device::CPU);
  const std::vector<ExportedTensor> tensors = pytorch_state(*trained.model);
  const std::map<std::string, std::string> metadata = export_metadata(source, trained);
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  report::write_text_file(out, safetensors_file(tensors, metadata));

  int64_t values = 0;
  for (const ExportedTensor& t : tensors) values += t.value.numel();
  std::printf("%s: %zu tensors (%lld values) of %s (epoch %d), conv weights as [out, in, kD, kH, kW]\n",
              out.string().c_str(), tensors.size(), static_cast<long long>(values), source.checkpoint.c_str(),
              trained.epoch);
  if (!source.fold_choice.empty()) std::printf("%s\n", source.fold_choice.c_str());
  if (trained.threshold)
    std::printf("threshold: %s\n", trained.threshold->source.c_str());
  else
    std::printf("no calibrated threshold in %s (only best.ckpt and best_ema.ckpt carry one)\n",
                source.checkpoint.c_str());
}

const RegisterCommand export_command{
    "export", 57, [](CLI::App& root) {
      auto a = std::make_shared<ExportArgs>();
      CLI::App* cmd =
          root.add_subcommand("export", "a fold's chosen model, or a checkpoint's, as a safetensors file for PyTorch");
      cmd->add_option("checkpoint", a->source,
                      "best.ckpt, best_ema.ckpt or last.ckpt of a fold, or a finished fold's directory: the model "
                      "its CV chose (fold.json)")
          ->required()
          ->check(CLI::ExistingPath);
      cmd->add_option("--format", a->format, "file format: safetensors")
          ->required()
          ->check(CLI::IsMember({"safetensors"}));
      cmd->add_option("--out", a->out, "output file (default: the checkpoint's path with .safetensors)");
      cmd->callback([a] { run_export(*a); });
    }};

}  // namespace
}  // namespace dsmil::app
