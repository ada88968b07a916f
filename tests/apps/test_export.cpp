// `dsmil export` from the binary on the CPU: the safetensors file it writes is read back here by a parser of
// the format's own (u64 length, JSON header, raw bytes), independent of the writer, and every tensor's name,
// dtype, shape and bytes are checked against the checkpoint (conv weights transposed from [out, kD, kH, kW, in]
// to [out, in, kD, kH, kW]), as are the metadata; a fold directory exports the model its fold.json chose. Its
// usage errors are tested with the others' in test_cli.cpp.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/provenance.h"
#include "apps/report/run_dir.h"
#include "apps/train/config.h"
#include "mil/dual_stream.h"
#include "nn/checkpoint.h"
#include "tests/apps/subprocess.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

test::Finished run_dsmil(std::vector<std::string> args) {
  args.insert(args.begin(), DSMIL_BINARY);
  return test::run_program(args);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A small model (ResNet-10 of width 4, DSMIL attention, soft pooling) whose every value is drawn at random, so
// that a swapped name, a wrong transposition or a batch-norm statistic left at its initial 1 or 0 shows.
app::RunConfig small_config() {
  app::RunConfig c;
  c.depth = 10;
  c.width = 4;
  c.slab_depth = 3;
  c.grid = "16,40,40";
  c.attention = mil::Attention::Dsmil;
  c.pooling = mil::Pooling::Soft;
  c.eval_instances = 5;
  return c;
}

const json kTrainingProvenance = {{"version", "0.0.1"}, {"commit", "0123abc"}, {"dirty", false}};

// A checkpoint as the trainer writes best.ckpt (with a calibrated threshold) or last.ckpt (without one).
fs::path write_checkpoint(const fs::path& path, const app::RunConfig& config, bool calibrated) {
  mil::DualStreamMIL model(config.model_config(), test::run_seed());
  nn::Checkpoint ckpt;
  json meta = {{"format", "dsmil3d checkpoint"},
               {"epoch", 7},
               {"repeat", 0},
               {"fold", 1},
               {"config", app::config_to_toml(config)},
               {"provenance", kTrainingProvenance}};
  if (calibrated) {
    meta["threshold"] = 0.3712345678901234;
    meta["threshold_method"] = "youden";
    meta["threshold_bags"] = {
        {"sampling", "fixed"}, {"instances", config.eval_instances}, {"slab_depth", config.slab_depth}};
  }
  ckpt.metadata = meta.dump();
  for (const nn::NamedParameter& p : model.parameters())
    p.variable->value().copy_from(test::random_tensor(p.variable->shape()));
  for (const nn::NamedBuffer& b : model.buffers())
    b.tensor->copy_from(test::random_tensor(b.tensor->shape(), 0.5f, 2.0f));
  nn::add_parameters(ckpt, "model.", model.parameters());
  nn::add_state(ckpt, "model.", model.buffers());
  nn::save_checkpoint(path.string(), ckpt);
  return path;
}

struct FileTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

struct SafetensorsFile {
  std::map<std::string, FileTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// The format as its specification states it, checked strictly: the header fills its stated length, and the
// tensors' [begin, end) ranges tile the data section with no gap, overlap or trailing byte.
SafetensorsFile read_safetensors(const fs::path& path) {
  const std::string file = test::file_text(path);
  REQUIRE(file.size() >= 8);
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, file.data(), 8);  // little-endian, as the host
  REQUIRE(8 + header_bytes <= file.size());
  const json header = json::parse(file.substr(8, header_bytes));
  const std::string data = file.substr(8 + header_bytes);
  SafetensorsFile out;
  std::map<uint64_t, uint64_t> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      out.metadata = entry.get<std::map<std::string, std::string>>();
      continue;
    }
    const uint64_t begin = entry.at("data_offsets").at(0), end = entry.at("data_offsets").at(1);
    REQUIRE(begin <= end);
    REQUIRE(end <= data.size());
    ranges[begin] = end;
    out.tensors[name] = {entry.at("dtype"), entry.at("shape").get<std::vector<int64_t>>(),
                         data.substr(begin, end - begin)};
  }
  uint64_t next = 0;
  for (const auto& [begin, end] : ranges) {
    CHECK(begin == next);
    next = end;
  }
  CHECK(next == data.size());
  return out;
}

// A checkpoint tensor in PyTorch's layout: 5-D conv weights [K, T, R, S, C] -> [K, C, T, R, S], written out
// index by index.
std::vector<float> pytorch_values(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  if (t.ndim() != 5) return v;
  const Shape& s = t.shape();
  std::vector<float> out(v.size());
  size_t at = 0;
  for (int64_t k = 0; k < s[0]; ++k)
    for (int64_t c = 0; c < s[4]; ++c)
      for (int64_t d = 0; d < s[1]; ++d)
        for (int64_t h = 0; h < s[2]; ++h)
          for (int64_t w = 0; w < s[3]; ++w) out[at++] = v[(((k * s[1] + d) * s[2] + h) * s[3] + w) * s[4] + c];
  return out;
}

// The file holds exactly the checkpoint's model tensors, each under its name without "model.", as float32 in
// PyTorch's layout, bit for bit.
void check_tensors(const SafetensorsFile& file, const nn::Checkpoint& ckpt) {
  std::set<std::string> expected;
  int convs = 0;
  for (const nn::CheckpointTensor& t : ckpt.tensors) {
    REQUIRE(t.name.starts_with("model."));
    const std::string name = t.name.substr(6);
    CAPTURE(name);
    expected.insert(name);
    const auto found = file.tensors.find(name);
    REQUIRE(found != file.tensors.end());
    const FileTensor& got = found->second;
    CHECK(got.dtype == "F32");
    Shape shape = t.value.shape();
    if (shape.size() == 5) {
      shape = {shape[0], shape[4], shape[1], shape[2], shape[3]};
      ++convs;
    }
    CHECK(got.shape == shape);
    const std::vector<float> values = pytorch_values(t.value);
    REQUIRE(got.bytes.size() == values.size() * sizeof(float));
    CHECK(std::memcmp(got.bytes.data(), values.data(), got.bytes.size()) == 0);
  }
  CHECK(convs > 0);
  std::set<std::string> names;
  for (const auto& [name, tensor] : file.tensors) names.insert(name);
  CHECK(names == expected);
}

}  // namespace

TEST_CASE(
    "dsmil export writes the checkpoint's model as safetensors in PyTorch's layout, with the metadata to run it") {
  const app::RunConfig config = small_config();
  const fs::path dir = test::scratch("export");
  const fs::path checkpoint = write_checkpoint(dir / "best.ckpt", config, true);
  const fs::path out = dir / "exported" / "model.safetensors";
  const test::Finished run =
      run_dsmil({"export", checkpoint.string(), "--format", "safetensors", "--out", out.string()});
  CAPTURE(run.out);
  CAPTURE(run.err);
  REQUIRE(run.status == 0);
  CHECK(contains(run.out, out.string()));

  const SafetensorsFile file = read_safetensors(out);
  check_tensors(file, nn::load_checkpoint(checkpoint.string()));
  CHECK(file.tensors.count("encoder.stem.bn.running_var") == 1);
  CHECK(file.tensors.count("head.q1.weight") == 1);

  const std::map<std::string, std::string>& m = file.metadata;
  const app::Provenance build = app::current_provenance();
  CHECK(m.at("dsmil_version") == build.version);
  CHECK(m.at("dsmil_commit") == build.commit);
  CHECK(std::stod(m.at("threshold")) == 0.3712345678901234);
  CHECK(m.at("threshold_method") == "youden");
  CHECK(contains(m.at("threshold_rule"), "HGG when p(HGG) >= threshold"));
  CHECK(json::parse(m.at("threshold_bags")) == json({{"sampling", "fixed"}, {"instances", 5}, {"slab_depth", 3}}));
  CHECK(json::parse(m.at("training_provenance")) == kTrainingProvenance);
  CHECK(m.at("config") == app::config_to_toml(config));
  CHECK(m.at("epoch") == "7");
  CHECK(m.at("grid") == "16,40,40");
  CHECK(m.at("modalities") == "flair,t1,t1ce,t2");
  CHECK(m.at("slab_depth") == "3");
  CHECK(m.at("eval_instances") == "5");
  CHECK(contains(m.at("conv_weight_layout"), "[out, in, kD, kH, kW]"));
  CHECK(m.at("checkpoint") == fs::absolute(checkpoint).string());
  CHECK(m.at("checkpoint_sha256") == app::sha256_file_hex(checkpoint));
  const json model = json::parse(m.at("model"));
  CHECK(model.at("depth") == 10);
  CHECK(model.at("width") == 4);
  CHECK(model.at("slab_depth") == 3);
  CHECK(model.at("in_channels") == 4);
  CHECK(model.at("pooling") == "soft");
  CHECK(model.at("attention") == "dsmil");
  CHECK(model.at("query_size") == 128);
  // Epoch 7 of 40: tau_start 1 annealed geometrically towards tau_end 0.1, as predict and eval use it.
  CHECK(model.at("tau").get<double>() == doctest::Approx(std::pow(0.1, 6.0 / 39.0)).epsilon(1e-6));
  CHECK(m.at("batch_norm_eps") == "1e-05");
  CHECK(m.at("batch_norm_momentum") == "0.1");
  for (const char* key : {"input", "eval_bag", "output", "tensor_names", "format"}) CHECK(m.count(key) == 1);
}

TEST_CASE("dsmil export of a checkpoint without a calibrated threshold writes none, beside the checkpoint by default") {
  const fs::path dir = test::scratch("export_last");
  const fs::path checkpoint = write_checkpoint(dir / "last.ckpt", small_config(), false);
  const test::Finished run = run_dsmil({"export", checkpoint.string(), "--format", "safetensors"});
  CAPTURE(run.err);
  REQUIRE(run.status == 0);
  CHECK(contains(run.out, "no calibrated threshold"));
  const SafetensorsFile file = read_safetensors(dir / "last.safetensors");
  check_tensors(file, nn::load_checkpoint(checkpoint.string()));
  for (const char* key : {"threshold", "threshold_method", "threshold_rule", "threshold_bags"})
    CHECK(file.metadata.count(key) == 0);
}

TEST_CASE("dsmil export of a file that is not a checkpoint fails with status 1 naming it, writing nothing") {
  const fs::path dir = test::scratch("export_errors");
  const fs::path not_a_checkpoint = dir / "notes.ckpt";
  std::ofstream(not_a_checkpoint) << "not a checkpoint\n";
  const test::Finished run = run_dsmil({"export", not_a_checkpoint.string(), "--format", "safetensors"});
  CAPTURE(run.err);
  CHECK(run.status == 1);
  CHECK(run.err.rfind("dsmil: error: ", 0) == 0);
  CHECK(contains(run.err, "notes.ckpt"));
  CHECK_FALSE(fs::exists(dir / "notes.safetensors"));
}

TEST_CASE("dsmil export of a fold directory writes the model its fold.json chose, and says when a file is not it") {
  const fs::path fold_dir = test::scratch("export_fold") / "fold_1";
  fs::create_directories(fold_dir);
  const app::RunConfig config = small_config();
  const fs::path raw = write_checkpoint(fold_dir / "best.ckpt", config, true);
  const fs::path ema = write_checkpoint(fold_dir / "best_ema.ckpt", config, true);
  report::FoldInfo info;
  info.fold = 1;
  info.best_epoch = 7;
  info.chosen_model = "ema";
  info.monitor = "auc";
  info.threshold_method = "youden";
  info.protocol = "nested";
  report::write_fold_json(fold_dir / "fold.json", info);
  const std::string choice =
      "fold 1's chosen model: best_ema.ckpt (ema model of epoch 7, " + (fold_dir / "fold.json").string() + ")";

  const test::Finished from_dir = run_dsmil({"export", fold_dir.string(), "--format", "safetensors"});
  CAPTURE(from_dir.out);
  CAPTURE(from_dir.err);
  REQUIRE(from_dir.status == 0);
  CHECK(contains(from_dir.out, choice));
  const SafetensorsFile file = read_safetensors(fold_dir / "best_ema.safetensors");
  check_tensors(file, nn::load_checkpoint(ema.string()));
  CHECK(file.metadata.at("fold_choice") == choice);
  CHECK_FALSE(fs::exists(fold_dir / "best.safetensors"));

  const test::Finished from_raw = run_dsmil({"export", raw.string(), "--format", "safetensors"});
  CAPTURE(from_raw.out);
  REQUIRE(from_raw.status == 0);
  CHECK(contains(from_raw.out, "not " + choice));
  check_tensors(read_safetensors(fold_dir / "best.safetensors"), nn::load_checkpoint(raw.string()));

  const fs::path unfinished = test::scratch("export_fold") / "fold_2";
  fs::create_directories(unfinished);
  const test::Finished from_unfinished = run_dsmil({"export", unfinished.string(), "--format", "safetensors"});
  CHECK(from_unfinished.status == 1);
  CHECK(contains(from_unfinished.err, "holds no fold.json"));
}
