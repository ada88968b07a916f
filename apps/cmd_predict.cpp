// `dsmil predict`, two forms.
//
// One patient through one checkpoint (--checkpoint and the four NIfTI files): the case is checked and
// preprocessed like the training data, its bag is built as in the CV's evaluation and `dsmil eval`
// (predict_cases: config.eval_instances evenly spaced slabs), so the three give the same p(HGG); the command
// prints it with the threshold calibrated for that checkpoint (best.ckpt and best_ema.ckpt carry one; with
// last.ckpt, p(HGG) alone) and writes the attention as a NIfTI volume on the input's own voxel grid and axis
// order and a PNG montage of the most-attended slabs.
//
// A dataset through a CV run's ensemble (--run and --data): every fold's model as the CV chose it (fold.json's
// chosen_model), each fold's p(HGG) and their mean, labelled at the mean of the folds' calibrated thresholds;
// cases that fail a check are listed with their reasons and skipped, the rest predicted.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/command_registry.h"
#include "apps/report/plots.h"
#include "apps/report/run_dir.h"
#include "apps/train/batches.h"
#include "apps/train/trainer.h"
#include "data/cases.h"
#include "data/nifti_io.h"
#include "data/orientation.h"
#include "data/progress.h"

namespace dsmil::app {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct PredictArgs {
  std::string checkpoint, run, data, cache, out, attention, device = "auto", case_id = "patient";
  std::array<std::string, data::kModalities> modalities;
  int montage_slabs = 4;
};

const char* grade(double p_hgg, double threshold) { return p_hgg >= threshold ? "HGG" : "LGG"; }

struct AttentionFiles {
  fs::path map, montage;
  std::vector<size_t> most_attended;  // the montage's slabs (indices into the bag), most attended first
};

// One bag's attention as files named after `name` in `out_dir`: a NIfTI volume in the voxel grid of
// `reference` (the case's FLAIR) whose axial slices inside the brain box carry the mean attention of the bag's
// slabs that hold them (0 elsewhere), and a PNG montage of the most-attended slabs (FLAIR over T1ce, middle
// slice of each slab).
AttentionFiles write_attention_files(const data::CaseVolume& volume, const fs::path& reference_path,
                                     const std::vector<int>& starts, const std::vector<float>& attention,
                                     int slab_depth, int montage_slabs, const fs::path& out_dir,
                                     const std::string& name) {
  const int depth = volume.grid.depth;
  std::vector<double> slice_attention(depth, 0.0), slice_slabs(depth, 0.0);
  for (size_t i = 0; i < starts.size(); ++i)
    for (int z = starts[i]; z < starts[i] + slab_depth; ++z) {
      slice_attention[z] += attention[i];
      slice_slabs[z] += 1.0;
    }
  for (int z = 0; z < depth; ++z) slice_attention[z] = slice_slabs[z] > 0 ? slice_attention[z] / slice_slabs[z] : 0.0;

  // Back to the input's voxel grid: the grid's axial axis spans the brain box's z range in canonical order, which
  // the reference's own axis order then takes onto its stored grid, written with its voxel-to-world map.
  const data::Image3D reference = data::read_nifti(reference_path);
  const data::AxisReorder stored_order = data::canonical_reorder(reference);
  const std::array<int64_t, 3> dims = stored_order.canonical_dims(reference.dims);
  const data::SourceBox& box = volume.source_box;
  std::vector<float> map(reference.voxel_count(), 0.0f);
  const int64_t box_depth = box.end[2] - box.begin[2];
  for (int64_t z = box.begin[2]; z < box.end[2]; ++z) {
    const int d = static_cast<int>(std::min<int64_t>((z - box.begin[2]) * depth / box_depth, depth - 1));
    for (int64_t yv = box.begin[1]; yv < box.end[1]; ++yv)
      for (int64_t xv = box.begin[0]; xv < box.end[0]; ++xv)
        map[(z * dims[1] + yv) * dims[0] + xv] = static_cast<float>(slice_attention[d]);
  }
  fs::create_directories(out_dir);
  AttentionFiles files{out_dir / (name + "_attention.nii.gz"), out_dir / (name + "_montage.png"), {}};
  data::NiftiWriteOptions options;
  options.spacing = reference.spacing;
  options.voxel_to_world = reference.voxel_to_world;
  data::write_nifti<float>(files.map, reference.dims, data::reorder_to_stored(map, reference.dims, stored_order),
                           options);

  std::vector<size_t>& order = files.most_attended;
  order.resize(starts.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t u, size_t v) { return attention[u] > attention[v]; });
  order.resize(std::min<size_t>(order.size(), montage_slabs));
  std::vector<float> image(4 * volume.grid.voxels());
  volume.copy_image(image);
  const int64_t plane = int64_t{volume.grid.height} * volume.grid.width;
  std::vector<report::GraySlice> slices;
  for (int channel : {0, 2})
    for (size_t i : order) {
      const int64_t z = starts[i] + slab_depth / 2;
      const float* first = image.data() + channel * volume.grid.voxels() + z * plane;
      slices.push_back({volume.grid.width, volume.grid.height, std::vector<float>(first, first + plane)});
    }
  report::write_png_montage(files.montage, slices, static_cast<int>(order.size()));
  return files;
}

void run_predict_case(const PredictArgs& a) {
  const Device device = resolve_device(a.device);
  const TrainedModel trained = load_trained_model(a.checkpoint, device);
  const RunConfig& config = trained.config;

  data::CaseFiles files;
  files.case_id = a.case_id;
  files.patient_id = a.case_id;
  files.label = data::kLabelLGG;  // unknown; preprocessing does not read it
  for (int m = 0; m < data::kModalities; ++m) files.modalities[m] = a.modalities[m];
  data::PreprocessParams params;
  params.grid = data::parse_grid(config.grid);
  const std::vector<data::CaseVolume> cohort{data::preprocess_case(files, params)};
  const CasePrediction prediction =
      predict_cases(*trained.model, cohort, {0}, config, device, soft_pooling_tau(config, trained.epoch - 1)).front();
  const double p_hgg = prediction.p_hgg;
  const AttentionFiles attention =
      write_attention_files(cohort.front(), a.modalities[0], prediction.starts, prediction.attention, config.slab_depth,
                            a.montage_slabs, a.out, a.case_id);

  const fs::path table = fs::path(a.out) / "prediction.csv";
  report::write_text_file(table, fmt::format("case_id,p_hgg,threshold,prediction\n{},{:.9g},{},{}\n", a.case_id, p_hgg,
                                             trained.threshold ? fmt::format("{:.17g}", trained.threshold->value) : "",
                                             trained.threshold ? grade(p_hgg, trained.threshold->value) : ""));
  if (trained.threshold)
    std::printf("case %s: p(HGG) = %.4f -> %s at threshold %s\n", a.case_id.c_str(), p_hgg,
                grade(p_hgg, trained.threshold->value), trained.threshold->source.c_str());
  else
    std::printf("case %s: p(HGG) = %.4f (no calibrated threshold in %s: only best.ckpt and best_ema.ckpt carry one)\n",
                a.case_id.c_str(), p_hgg, a.checkpoint.c_str());
  std::printf("bag: %zu slabs of %d slices; most attended slab starts:", prediction.starts.size(), config.slab_depth);
  for (size_t i : attention.most_attended) std::printf(" %d (%.3f)", prediction.starts[i], prediction.attention[i]);
  std::printf("\nattention map: %s\nmontage (FLAIR over T1ce): %s\ntable: %s\n", attention.map.string().c_str(),
              attention.montage.string().c_str(), table.string().c_str());
}

// One member of the ensemble with its predictions, in the prepared dataset's case order.
struct EnsembleMember {
  std::string column;  // p_fold_<k>, or p_repeat_<r>_fold_<k> in a run of several repeats
  fs::path checkpoint;
  CheckpointThreshold threshold;
  std::vector<CasePrediction> predictions;
};

// The chosen model's calibrated threshold: the checkpoint's own, which must be the one fold.json states (a
// difference means the fold's files come from different trainings).
CheckpointThreshold member_threshold(const TrainedModel& trained, const report::FoldData& fold,
                                     const fs::path& checkpoint) {
  if (!trained.threshold)
    throw FormatError(fmt::format("dsmil predict: {} carries no calibrated threshold", checkpoint.string()));
  if (std::abs(trained.threshold->value - fold.info.threshold) > 1e-12)
    throw FormatError(fmt::format("dsmil predict: {} carries threshold {:.17g} but {} states {:.17g}",
                                  checkpoint.string(), trained.threshold->value, (fold.dir / "fold.json").string(),
                                  fold.info.threshold));
  return *trained.threshold;
}

// The ensemble's attention for one case: each instance's attention averaged over the members, whose bags of
// one config hold the same slabs.
std::vector<float> mean_attention(const std::vector<EnsembleMember>& members, size_t case_position) {
  const CasePrediction& first = members.front().predictions[case_position];
  std::vector<float> mean(first.attention.size(), 0.0f);
  for (const EnsembleMember& member : members) {
    const CasePrediction& q = member.predictions[case_position];
    if (q.starts != first.starts)
      throw Error(fmt::format("dsmil predict: the bags of {} and {} hold different slabs", members.front().column,
                              member.column));
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += q.attention[i] / static_cast<float>(members.size());
  }
  return mean;
}

void run_predict_ensemble(const PredictArgs& a) {
  const Device device = resolve_device(a.device);
  const report::RunData run = report::load_runs({a.run});
  const bool repeats = run.n_repeats() > 1;

  std::vector<EnsembleMember> members;
  PreparedDataset dataset;
  RunConfig config;
  std::unique_ptr<data::ProgressReporter> progress;
  for (const report::FoldData& fold : run.folds) {
    EnsembleMember member;
    member.column = repeats ? fmt::format("p_repeat_{}_fold_{}", fold.info.repeat, fold.info.fold)
                            : fmt::format("p_fold_{}", fold.info.fold);
    member.checkpoint = report::chosen_checkpoint(fold.dir, fold.info);
    const TrainedModel trained = load_trained_model(member.checkpoint, device);
    member.threshold = member_threshold(trained, fold, member.checkpoint);
    // The dataset is prepared once, on the grid of the run's config (one config for every fold: load_runs).
    if (members.empty()) {
      config = trained.config;
      dataset = prepare_dataset(a.data, a.cache, config, data::BadCasePolicy::skip);
      progress = std::make_unique<data::ProgressReporter>(
          "predict", static_cast<int64_t>(run.folds.size() * dataset.cases.size()));
    }
    const float tau = soft_pooling_tau(trained.config, trained.epoch - 1);
    for (size_t first = 0; first < dataset.cases.size(); first += config.bags_per_step) {
      std::vector<int> chunk(std::min<size_t>(config.bags_per_step, dataset.cases.size() - first));
      std::iota(chunk.begin(), chunk.end(), static_cast<int>(first));
      for (CasePrediction& q : predict_cases(*trained.model, dataset.cases, chunk, trained.config, device, tau)) {
        member.predictions.push_back(std::move(q));
        progress->advance(member.column);
      }
    }
    members.push_back(std::move(member));
  }
  progress->finish();

  // The ensemble's p(HGG) is the members' mean, and its threshold the mean of theirs: p_ensemble >= T holds
  // exactly when the members' margins over their own thresholds, p_k - t_k, are >= 0 on average. Each t_k was
  // calibrated on its fold's inner validation split; the ensemble has no split of its own to calibrate on (every
  // case of the run's cohort trained some member), so it keeps the members' calibrations rather than 0.5.
  double threshold = 0.0;
  for (const EnsembleMember& member : members)
    threshold += member.threshold.value / static_cast<double>(members.size());
  const std::string rule = fmt::format(
      "HGG when p_ensemble >= {:.4f}, the mean of the {} folds' calibrated thresholds (equivalently: when the folds' "
      "p(HGG) lie above their own thresholds on average); p_ensemble is the mean of the folds' p(HGG)",
      threshold, members.size());

  std::string csv = "case_id,label";
  for (const EnsembleMember& member : members) csv += "," + member.column;
  csv += ",p_ensemble,threshold,prediction\n";
  int hgg_predicted = 0;
  std::vector<double> p_ensemble(dataset.cases.size(), 0.0);
  for (size_t c = 0; c < dataset.cases.size(); ++c) {
    csv += fmt::format("{},{}", dataset.cases[c].case_id, dataset.cases[c].label);
    for (const EnsembleMember& member : members) {
      csv += fmt::format(",{:.9g}", member.predictions[c].p_hgg);
      p_ensemble[c] += member.predictions[c].p_hgg / static_cast<double>(members.size());
    }
    csv += fmt::format(",{:.9g},{:.17g},{}\n", p_ensemble[c], threshold, grade(p_ensemble[c], threshold));
    hgg_predicted += p_ensemble[c] >= threshold;
  }
  const fs::path table = a.out;
  if (table.has_parent_path()) fs::create_directories(table.parent_path());
  report::write_text_file(table, csv);

  json side{{"run", fs::absolute(a.run).string()},
            {"data", fs::absolute(a.data).string()},
            {"threshold", threshold},
            {"threshold_rule", rule},
            {"n_predicted", dataset.cases.size()},
            {"folds", json::array()},
            {"skipped", json::array()}};
  for (const EnsembleMember& member : members)
    side["folds"].push_back({{"column", member.column},
                             {"checkpoint", fs::absolute(member.checkpoint).string()},
                             {"threshold", member.threshold.value},
                             {"threshold_method", member.threshold.method}});
  for (const data::SkippedCase& s : dataset.skipped)
    side["skipped"].push_back({{"case_id", s.case_id}, {"file", s.file.string()}, {"reason", s.reason}});
  const fs::path side_path = fs::path(table).replace_extension(".ensemble.json");
  report::write_text_file(side_path, side.dump(2) + "\n");

  std::printf("ensemble of %zu folds of %s:\n", members.size(), a.run.c_str());
  for (const EnsembleMember& member : members)
    std::printf("  %s: %s, threshold %s\n", member.column.c_str(), member.checkpoint.string().c_str(),
                member.threshold.source.c_str());
  std::printf("threshold rule: %s\n", rule.c_str());
  std::printf("%zu cases predicted: %d HGG, %zu LGG; %zu skipped\n", dataset.cases.size(), hgg_predicted,
              dataset.cases.size() - hgg_predicted, dataset.skipped.size());
  for (const data::SkippedCase& s : dataset.skipped) std::printf("  skipped: %s\n", s.message().c_str());

  if (!a.attention.empty()) {
    data::ProgressReporter maps("attention maps", static_cast<int64_t>(dataset.cases.size()));
    for (size_t c = 0; c < dataset.cases.size(); ++c) {
      const data::CaseVolume& volume = dataset.cases[c];
      write_attention_files(volume, dataset.files[c].modalities[0], members.front().predictions[c].starts,
                            mean_attention(members, c), config.slab_depth, a.montage_slabs, a.attention,
                            volume.case_id);
      maps.advance(volume.case_id);
    }
    maps.finish();
    std::printf("attention (mean over the folds): %s/<case>_attention.nii.gz and <case>_montage.png\n",
                a.attention.c_str());
  }
  std::printf("table: %s\nthreshold rule, folds and skipped cases: %s\n", table.string().c_str(),
              side_path.string().c_str());
}

const RegisterCommand predict_command{
    "predict", 55, [](CLI::App& root) {
      auto a = std::make_shared<PredictArgs>();
      CLI::App* cmd = root.add_subcommand("predict",
                                          "p(HGG) of one patient through a checkpoint (--checkpoint), or of a dataset "
                                          "through a CV run's folds (--run)");
      CLI::Option* checkpoint =
          cmd->add_option("--checkpoint", a->checkpoint, "one case: best.ckpt or best_ema.ckpt of a fold")
              ->check(CLI::ExistingFile);
      CLI::Option* run =
          cmd->add_option("--run", a->run, "a dataset: the CV run whose folds' chosen models form the ensemble")
              ->check(CLI::ExistingDirectory)
              ->excludes(checkpoint);
      for (int m = 0; m < data::kModalities; ++m) {
        const std::string name(data::kModalityNames[m]);
        CLI::Option* modality = cmd->add_option("--" + name, a->modalities[m], "one case: its " + name + " NIfTI")
                                    ->check(CLI::ExistingFile)
                                    ->needs(checkpoint);
        checkpoint->needs(modality);
      }
      run->needs(
          cmd->add_option("--data", a->data, "with --run: the dataset, a BraTS folder or manifest CSV")->needs(run));
      cmd->add_option("--cache", a->cache, "with --run: preprocessing cache (default: the run config's)")->needs(run);
      cmd->add_option("--attention", a->attention, "with --run: folder for each case's attention map and montage")
          ->needs(run);
      cmd->add_option("--out", a->out, "output folder (--checkpoint) or CSV file (--run)")->required();
      cmd->add_option("--case-id", a->case_id, "one case: name used for the output files")
          ->capture_default_str()
          ->needs(checkpoint);
      cmd->add_option("--device", a->device, "cpu | cuda | auto")->capture_default_str();
      cmd->add_option("--montage-slabs", a->montage_slabs, "slabs in each montage")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->callback([a] {
        if (a->checkpoint.empty() && a->run.empty())
          throw CLI::ValidationError("--checkpoint or --run", "one of them is required");
        if (a->run.empty())
          run_predict_case(*a);
        else
          run_predict_ensemble(*a);
      });
    }};

}  // namespace
}  // namespace dsmil::app
