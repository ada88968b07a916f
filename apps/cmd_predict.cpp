// `dsmil predict`: one patient's four NIfTI files through a trained checkpoint. The case is checked and
// preprocessed like the training data, its bag is built as in the CV's evaluation and `dsmil eval`
// (predict_cases: config.eval_instances evenly spaced slabs), so the three give the same p(HGG); the command
// prints it with the threshold calibrated for that checkpoint (best.ckpt and best_ema.ckpt carry one; with
// last.ckpt, p(HGG) alone) and writes the attention as a NIfTI volume on the input's own voxel grid and axis
// order (each axial slice carries the mean attention of the bag's slabs that hold it, inside the brain box; 0
// elsewhere) and a PNG montage of the most-attended slabs (FLAIR over T1ce, middle slice of each slab).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/report/plots.h"
#include "apps/train/batches.h"
#include "apps/train/trainer.h"
#include "data/cases.h"
#include "data/nifti_io.h"
#include "data/orientation.h"

namespace dsmil::app {
namespace {

namespace fs = std::filesystem;

struct PredictArgs {
  std::string checkpoint, out, device = "auto", case_id = "patient";
  std::array<std::string, data::kModalities> modalities;
  int montage_slabs = 4;
};

void run_predict(const PredictArgs& a) {
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
  const std::vector<data::CaseVolume> cohort{data::preprocess_case(files, params, stderr)};
  const data::CaseVolume& volume = cohort.front();
  const CasePrediction prediction =
      predict_cases(*trained.model, cohort, {0}, config, device, soft_pooling_tau(config, trained.epoch - 1)).front();
  const double p_hgg = prediction.p_hgg;
  const std::vector<float>& attention = prediction.attention;

  // Per grid slice: mean attention of the slabs holding it.
  const std::vector<int>& starts = prediction.starts;
  const int depth = volume.grid.depth;
  std::vector<double> slice_attention(depth, 0.0), slice_slabs(depth, 0.0);
  for (size_t i = 0; i < starts.size(); ++i)
    for (int z = starts[i]; z < starts[i] + config.slab_depth; ++z) {
      slice_attention[z] += attention[i];
      slice_slabs[z] += 1.0;
    }
  for (int z = 0; z < depth; ++z) slice_attention[z] = slice_slabs[z] > 0 ? slice_attention[z] / slice_slabs[z] : 0.0;

  // Back to the input's voxel grid: the grid's axial axis spans the brain box's z range in canonical order, which
  // the FLAIR's own axis order then takes onto its stored grid, written with its voxel-to-world map.
  const data::Image3D reference = data::read_nifti(a.modalities[0]);
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
  fs::create_directories(a.out);
  const fs::path map_path = fs::path(a.out) / (a.case_id + "_attention.nii.gz");
  data::NiftiWriteOptions options;
  options.spacing = reference.spacing;
  options.voxel_to_world = reference.voxel_to_world;
  data::write_nifti<float>(map_path, reference.dims, data::reorder_to_stored(map, reference.dims, stored_order),
                           options);

  // Montage: the most-attended slabs, FLAIR (top row) and T1ce (bottom row) at each slab's middle slice.
  std::vector<size_t> order(starts.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t u, size_t v) { return attention[u] > attention[v]; });
  order.resize(std::min<size_t>(order.size(), a.montage_slabs));
  std::vector<float> image(4 * volume.grid.voxels());
  volume.copy_image(image);
  const int64_t plane = int64_t{volume.grid.height} * volume.grid.width;
  std::vector<report::GraySlice> slices;
  for (int channel : {0, 2})
    for (size_t i : order) {
      const int64_t z = starts[i] + config.slab_depth / 2;
      const float* first = image.data() + channel * volume.grid.voxels() + z * plane;
      slices.push_back({volume.grid.width, volume.grid.height, std::vector<float>(first, first + plane)});
    }
  const fs::path montage_path = fs::path(a.out) / (a.case_id + "_montage.png");
  report::write_png_montage(montage_path, slices, static_cast<int>(order.size()));

  const fs::path table = fs::path(a.out) / "prediction.csv";
  report::write_text_file(table, fmt::format("case_id,p_hgg,threshold,prediction\n{},{:.9g},{},{}\n", a.case_id, p_hgg,
                                             trained.threshold ? fmt::format("{:.17g}", trained.threshold->value) : "",
                                             !trained.threshold                      ? ""
                                             : p_hgg >= trained.threshold->value ? "HGG"
                                                                                 : "LGG"));
  if (trained.threshold)
    std::printf("case %s: p(HGG) = %.4f -> %s at threshold %s\n", a.case_id.c_str(), p_hgg,
                p_hgg >= trained.threshold->value ? "HGG" : "LGG", trained.threshold->source.c_str());
  else
    std::printf("case %s: p(HGG) = %.4f (no calibrated threshold in %s: only best.ckpt and best_ema.ckpt carry one)\n",
                a.case_id.c_str(), p_hgg, a.checkpoint.c_str());
  std::printf("bag: %zu slabs of %d slices; most attended slab starts:", starts.size(), config.slab_depth);
  for (size_t i : order) std::printf(" %d (%.3f)", starts[i], attention[i]);
  std::printf("\nattention map: %s\nmontage (FLAIR over T1ce): %s\ntable: %s\n", map_path.string().c_str(),
              montage_path.string().c_str(), table.string().c_str());
}

const RegisterCommand predict_command{"predict", 55, [](CLI::App& root) {
  auto a = std::make_shared<PredictArgs>();
  CLI::App* cmd = root.add_subcommand("predict", "p(HGG), attention map (NIfTI) and montage for one patient's four NIfTI files");
  cmd->add_option("--checkpoint", a->checkpoint, "best.ckpt or best_ema.ckpt of a fold")->required()->check(CLI::ExistingFile);
  cmd->add_option("--flair", a->modalities[0], "FLAIR NIfTI")->required()->check(CLI::ExistingFile);
  cmd->add_option("--t1", a->modalities[1], "T1 NIfTI")->required()->check(CLI::ExistingFile);
  cmd->add_option("--t1ce", a->modalities[2], "T1ce NIfTI")->required()->check(CLI::ExistingFile);
  cmd->add_option("--t2", a->modalities[3], "T2 NIfTI")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "output folder")->required();
  cmd->add_option("--case-id", a->case_id, "name used for the output files")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | auto")->capture_default_str();
  cmd->add_option("--montage-slabs", a->montage_slabs, "slabs in the montage")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->callback([a] { run_predict(*a); });
}};

}  // namespace
}  // namespace dsmil::app
