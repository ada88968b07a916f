// Reading of run directories (layout in apps/report/FORMAT.md): fold.json, metrics.jsonl (one record per
// epoch), predictions.csv (one row per case) and attention.csv of each fold, found under one or more runs.
#pragma once

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/report/metrics.h"

namespace dsmil::report {

// One row of fold_k/predictions.csv.
struct PredictionRow {
  std::string case_id;
  int label = 0;  // 1 = HGG, 0 = LGG
  double p_hgg = 0;
  int pred_05 = 0;
  double threshold = 0.5;
  int pred_thr = 0;
  std::string split;  // "test" (outer fold) or "val" (inner validation)
  std::string model;  // "raw" or "ema"
};

// One row of fold_k/attention.csv.
struct AttentionRow {
  std::string case_id;
  int instance = 0;
  int slab_start = 0;
  double attention = 0;
  bool critical = false;
};

// The metrics of one split in one epoch as the training loop wrote them; NaN where it wrote null.
struct SplitRecord {
  double loss = 0, auc = 0, accuracy = 0, balanced_accuracy = 0, f1 = 0, recall_lgg = 0, recall_hgg = 0;
  Confusion confusion;
};

struct AttentionRecord {
  double entropy = 0, entropy_norm = 0, top1 = 0, neff = 0;
  double confidence_mean = 0, confidence_p10 = 0, confidence_p50 = 0, confidence_p90 = 0;
  std::optional<double> critical_tumour_share;
  // Where tumour segmentations exist: the attention weight on slabs holding tumour, and the share of a bag's slabs
  // holding tumour (what uniform attention would put there), each a mean over the bags.
  std::optional<double> attention_tumour_mass, tumour_slab_share;
};

// One line of fold_k/metrics.jsonl.
struct EpochRecord {
  int epoch = 0;  // 1-based
  double lr = 0, tau = 0, throughput_bags_per_s = 0, epoch_time_s = 0;
  SplitRecord train, val;
  std::optional<SplitRecord> val_ema;
  std::optional<AttentionRecord> attention;
  std::string health_warning;  // "health"/"warning": why training looked flat at this epoch (empty: none)
};

// fold_k/fold.json.
struct FoldInfo {
  int fold = 0;
  int repeat = 0;  // the "repeat" field; when absent read_fold_json gives -1 and load_fold takes r of
                   // a repeat_r parent folder, else 0
  int best_epoch = 0;
  std::string chosen_model;  // "raw" | "ema"
  std::string monitor;
  double monitor_value = 0;
  std::string threshold_method;  // "0.5" | "youden" | "max_f1"
  double threshold = 0.5;
  bool stopped_early = false;
  int epochs_run = 0;
  std::string protocol;  // "nested" | "select_on_test"
  int n_train = 0, n_val = 0, n_test = 0;
};

struct FoldData {
  std::filesystem::path dir;
  FoldInfo info;
  std::vector<EpochRecord> history;
  std::vector<PredictionRow> predictions;
  std::vector<AttentionRow> attention;  // empty when attention.csv is absent
};

// Folds of one or several runs, ordered by (repeat, fold).
struct RunData {
  std::vector<FoldData> folds;
  int n_repeats() const;
  std::string protocol() const;  // the folds' protocol, "mixed" if they differ
};

// Loads every fold found in `inputs`: a fold directory (holds fold.json), a run directory (fold_k/ or
// repeat_r/fold_k/ below it), in any mix. Throws FormatError naming the file and the reason for a
// missing or malformed file and for two folds with the same (repeat, fold).
RunData load_runs(const std::vector<std::filesystem::path>& inputs);
FoldData load_fold(const std::filesystem::path& fold_dir);

std::vector<PredictionRow> read_predictions_csv(const std::filesystem::path& path);
std::vector<AttentionRow> read_attention_csv(const std::filesystem::path& path);
std::vector<EpochRecord> read_metrics_jsonl(const std::filesystem::path& path);
FoldInfo read_fold_json(const std::filesystem::path& path);

// Writers of the same format, for the training loop (so that both sides agree on every detail).
// A metrics.jsonl split record ("train", "val", "val_ema") of one epoch: loss as given, AUC, and the
// threshold metrics at 0.5 with their confusion matrix; undefined values as null.
nlohmann::json split_record_json(std::span<const int> labels, std::span<const double> p_hgg, double loss);
// A predictions.csv row with pred_05 and pred_thr derived from p_hgg.
PredictionRow prediction_row(std::string case_id, int label, double p_hgg, double threshold, std::string split,
                             std::string model);
void write_predictions_csv(const std::filesystem::path& path, const std::vector<PredictionRow>& rows);
void write_attention_csv(const std::filesystem::path& path, const std::vector<AttentionRow>& rows);
// fold.json; "repeat" is written when info.repeat >= 0.
void write_fold_json(const std::filesystem::path& path, const FoldInfo& info);

// Writes `text` to `path` (replacing it) through a temporary file renamed over it, so that a reader or a
// killed run never sees half a file; Error when the file cannot be written.
void write_text_file(const std::filesystem::path& path, const std::string& text);
// The whole file as text; Error when it cannot be read.
std::string read_text_file(const std::filesystem::path& path);

// The validation record of the chosen model: val_ema when chosen_model is "ema" (and it was written).
const SplitRecord& chosen_val(const EpochRecord& epoch, const FoldInfo& info);
// The checkpoint of the model the fold chose: best.ckpt for chosen_model "raw", best_ema.ckpt for "ema".
std::filesystem::path chosen_checkpoint(const std::filesystem::path& fold_dir, const FoldInfo& info);

// The value of a fold.json monitor (FORMAT.md) in a split record; NaN for a monitor it does not know.
double monitor_value(const SplitRecord& record, const std::string& monitor);

// Rows of one split ("test" or "val"), and their labels and probabilities side by side.
struct LabelledScores {
  std::vector<int> labels;
  std::vector<double> p_hgg;
  std::vector<double> thresholds;  // the row's threshold column
};
LabelledScores scores_of_split(const std::vector<PredictionRow>& rows, const std::string& split);

}  // namespace dsmil::report
