// A fold's checkpoint files.
#include "apps/train/fold_checkpoints.h"

#include <fmt/format.h>

#include "apps/provenance.h"
#include "apps/train/fault_points.h"
#include "apps/train/trainer.h"

namespace dsmil::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Where last.ckpt keeps the best models' tensors.
const std::string kBestRaw = "best_raw.", kBestEma = "best_ema.";

// The tensors of `ckpt` named prefix + name, under their names, with `metadata`.
nn::Checkpoint tensors_with_prefix(const nn::Checkpoint& ckpt, const std::string& prefix, std::string metadata) {
  nn::Checkpoint part;
  part.metadata = std::move(metadata);
  for (const nn::CheckpointTensor& t : ckpt.tensors)
    if (t.name.starts_with(prefix)) part.tensors.push_back({t.name.substr(prefix.size()), t.value});
  return part;
}

}  // namespace

FoldCheckpoints::FoldCheckpoints(const RunConfig& config, const FoldPlan& plan, fs::path dir)
    : c_(config), plan_(plan), dir_(std::move(dir)), last_save_(std::chrono::steady_clock::now()) {
  Provenance p = current_provenance();
  p.config_sha256 = sha256_hex(config_to_toml(c_));
  provenance_ = p.to_json();
}

json FoldCheckpoints::metadata(int epoch) const {
  return {{"format", "dsmil3d checkpoint"}, {"epoch", epoch},           {"repeat", plan_.repeat}, {"fold", plan_.fold},
          {"config", config_to_toml(c_)},   {"provenance", provenance_}};
}

nn::Checkpoint FoldCheckpoints::snapshot(mil::DualStreamMIL& model, int epoch) const {
  nn::Checkpoint ckpt;
  ckpt.metadata = metadata(epoch).dump();
  nn::add_parameters(ckpt, "model.", model.parameters());
  nn::add_state(ckpt, "model.", model.buffers());
  return ckpt;
}

bool FoldCheckpoints::due() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_).count() >= c_.checkpoint_seconds;
}

void FoldCheckpoints::save_last(int epochs_done, Learner& learner, const ModelSelection& selection,
                                const BestModels& best) {
  nn::Checkpoint ckpt;
  json meta = metadata(epochs_done);
  learner.save_state(ckpt, meta);
  selection.save(meta);
  ckpt.metadata = meta.dump();
  for (const auto& [prefix, model] : {std::pair{kBestRaw, &best.raw}, std::pair{kBestEma, &best.ema}})
    for (const nn::CheckpointTensor& t : model->tensors) ckpt.tensors.push_back({prefix + t.name, t.value});
  nn::save_checkpoint(last_path().string(), ckpt);
  saved_epochs_ = epochs_done;
  last_save_ = std::chrono::steady_clock::now();
  fault_point("checkpoint_saved");
  if (selection.stopped_early()) fault_point("stop_saved");
}

int FoldCheckpoints::restore_last(Learner& learner, ModelSelection& selection, BestModels& best) {
  const nn::Checkpoint ckpt = nn::load_checkpoint(last_path().string());
  const json meta = json::parse(ckpt.metadata);
  if (meta.value("config", "") != config_to_toml(c_))
    throw Error(fmt::format("--resume: {} was written with another config", last_path().string()));
  learner.restore_state(ckpt, meta);
  selection.restore(meta);
  best.raw = tensors_with_prefix(ckpt, kBestRaw, metadata(selection.best_raw().epoch).dump());
  best.ema = tensors_with_prefix(ckpt, kBestEma, metadata(selection.best_ema().epoch).dump());
  saved_epochs_ = meta.at("epoch").get<int>();
  return saved_epochs_;
}

void FoldCheckpoints::save_best(const std::string& name, nn::Checkpoint weights, double threshold,
                                const std::string& method) const {
  json meta = json::parse(weights.metadata);
  meta["threshold"] = threshold;
  meta["threshold_method"] = method;
  meta["threshold_bags"] = {{"sampling", "fixed"}, {"instances", c_.eval_instances}, {"slab_depth", c_.slab_depth}};
  weights.metadata = meta.dump();
  nn::save_checkpoint((dir_ / name).string(), weights);
}

}  // namespace dsmil::app
