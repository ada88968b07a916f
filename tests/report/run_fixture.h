// Test helper: writes crafted run directories in the format of apps/report/FORMAT.md (fold.json,
// metrics.jsonl, predictions.csv, attention.csv), with its own counting so that the files agree with
// each other unless a test tampers with them.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fixture {

namespace fs = std::filesystem;
using nlohmann::json;

struct Counts {
  long tn = 0, fp = 0, fn = 0, tp = 0;
};

inline Counts count_at(const std::vector<int>& y, const std::vector<double>& p, double t) {
  Counts c;
  for (size_t i = 0; i < y.size(); ++i) {
    const bool hgg = p[i] >= t;
    if (y[i] == 1)
      hgg ? ++c.tp : ++c.fn;
    else
      hgg ? ++c.fp : ++c.tn;
  }
  return c;
}

// AUC over all HGG–LGG pairs, ties half.
inline double pair_auc(const std::vector<int>& y, const std::vector<double>& p) {
  double sum = 0, pairs = 0;
  for (size_t i = 0; i < y.size(); ++i)
    for (size_t j = 0; j < y.size(); ++j)
      if (y[i] == 1 && y[j] == 0) {
        sum += p[i] > p[j] ? 1.0 : (p[i] == p[j] ? 0.5 : 0.0);
        pairs += 1;
      }
  return sum / pairs;
}

inline json nan_as_null(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

// A split record whose rates follow from its confusion matrix.
inline json split_record(double loss, double auc, const Counts& c) {
  const double n_hgg = c.tp + c.fn, n_lgg = c.tn + c.fp;
  const double rec_h = n_hgg > 0 ? c.tp / n_hgg : NAN, rec_l = n_lgg > 0 ? c.tn / n_lgg : NAN;
  const double f1_den = 2.0 * c.tp + c.fp + c.fn;
  return {{"loss", loss},
          {"auc", auc},
          {"accuracy", double(c.tp + c.tn) / double(c.tp + c.tn + c.fp + c.fn)},
          {"balanced_accuracy", nan_as_null((rec_h + rec_l) / 2)},
          {"f1", nan_as_null(f1_den > 0 ? 2.0 * c.tp / f1_den : NAN)},
          {"recall_lgg", nan_as_null(rec_l)},
          {"recall_hgg", nan_as_null(rec_h)},
          {"confusion", {{c.tn, c.fp}, {c.fn, c.tp}}}};
}

struct EpochSpec {
  double train_loss = 0.5, val_loss = 0.5, val_auc = 0.8;
  double top1 = 0.3, neff = 4.0, entropy_norm = 0.8;
  double train_auc = 0.9;
  // Attention weight on slabs holding tumour and their share of a bag's slabs; NaN: no segmentation (null).
  double tumour_mass = NAN, tumour_slab_share = NAN;
};

struct FoldSpec {
  int fold = 0;
  int repeat = -1;  // -1: no "repeat" field
  std::vector<int> test_labels, val_labels;
  std::vector<double> test_p, val_p;
  std::string threshold_method = "0.5";
  double threshold = 0.5;
  std::string chosen_model = "ema";
  std::string protocol = "nested";
  std::string monitor = "auc";  // or "min_class_recall"
  int best_epoch = 1;
  std::vector<EpochSpec> epochs;
};

// Writes fold_dir/{fold.json, metrics.jsonl, predictions.csv, attention.csv}. The best epoch's validation
// record is the validation rows at 0.5 with their pairwise AUC (the test rows under select_on_test).
inline void write_fold(const fs::path& fold_dir, const FoldSpec& f) {
  fs::create_directories(fold_dir);
  const bool nested = f.protocol == "nested";
  const auto& cal_y = nested ? f.val_labels : f.test_labels;
  const auto& cal_p = nested ? f.val_p : f.test_p;
  const Counts cal_counts = count_at(cal_y, cal_p, 0.5);
  const double cal_auc = pair_auc(cal_y, cal_p);
  const Counts train_counts{40, 10, 12, 38};

  std::ofstream metrics(fold_dir / "metrics.jsonl");
  for (size_t e = 0; e < f.epochs.size(); ++e) {
    const EpochSpec& s = f.epochs[e];
    const int epoch = static_cast<int>(e) + 1;
    const double val_auc = epoch == f.best_epoch ? cal_auc : s.val_auc;
    const json val = split_record(s.val_loss, val_auc, cal_counts);
    json line{{"epoch", epoch},
              {"lr", 1e-4},
              {"tau", 1.0},
              {"train", split_record(s.train_loss, s.train_auc, train_counts)},
              {"val", val},
              {"val_ema", val},
              {"attention",
               {{"entropy", s.entropy_norm * std::log(16.0)},
                {"entropy_norm", s.entropy_norm},
                {"top1", s.top1},
                {"neff", s.neff},
                {"selection_confidence", {{"mean", 0.7}, {"p10", 0.5}, {"p50", 0.7}, {"p90", 0.9}}},
                {"critical_tumour_share", nullptr},
                {"attention_tumour_mass", nan_as_null(s.tumour_mass)},
                {"tumour_slab_share", nan_as_null(s.tumour_slab_share)}}},
              {"throughput_bags_per_s", 12.5},
              {"epoch_time_s", 3.0}};
    metrics << line.dump() << "\n";
  }

  const double min_class_recall = std::min(double(cal_counts.tn) / double(cal_counts.tn + cal_counts.fp),
                                           double(cal_counts.tp) / double(cal_counts.tp + cal_counts.fn));
  json fold{{"fold", f.fold},
            {"best_epoch", f.best_epoch},
            {"chosen_model", f.chosen_model},
            {"monitor", f.monitor},
            {"monitor_value", f.monitor == "auc" ? cal_auc : min_class_recall},
            {"threshold_method", f.threshold_method},
            {"threshold", f.threshold},
            {"stopped_early", false},
            {"epochs_run", f.epochs.size()},
            {"protocol", f.protocol},
            {"n_train", 100},
            {"n_val", f.val_labels.size()},
            {"n_test", f.test_labels.size()}};
  if (f.repeat >= 0) fold["repeat"] = f.repeat;
  std::ofstream(fold_dir / "fold.json") << fold.dump(2) << "\n";

  std::ofstream csv(fold_dir / "predictions.csv");
  csv << "case_id,label,p_hgg,pred_05,threshold,pred_thr,split,model\n";
  const auto rows = [&](const std::vector<int>& y, const std::vector<double>& p, const char* split) {
    for (size_t i = 0; i < y.size(); ++i)
      csv << fmt::format("{}_f{}_{},{},{:.17g},{},{:.17g},{},{},{}\n", split, f.fold, i, y[i], p[i], int(p[i] >= 0.5),
                         f.threshold, int(p[i] >= f.threshold), split, f.chosen_model);
  };
  rows(f.test_labels, f.test_p, "test");
  rows(f.val_labels, f.val_p, "val");

  std::ofstream attention(fold_dir / "attention.csv");
  attention << "case_id,instance,slab_start,attention,critical\n";
  for (size_t i = 0; i < std::min<size_t>(3, f.val_labels.size()); ++i)
    for (int k = 0; k < 4; ++k)
      attention << fmt::format("val_f{}_{},{},{},{},{}\n", f.fold, i, k, 10 + 20 * k, 0.1 + 0.1 * k, int(k == 3));
}

// Scores of a well-separated, roughly calibrated model: HGG in [0.85, 0.99], LGG in [0.01, 0.15].
inline void healthy_scores(std::mt19937& rng, int n_lgg, int n_hgg, std::vector<int>& y, std::vector<double>& p) {
  std::uniform_real_distribution<double> high(0.85, 0.99), low(0.01, 0.15);
  for (int i = 0; i < n_lgg; ++i) y.push_back(0), p.push_back(low(rng));
  for (int i = 0; i < n_hgg; ++i) y.push_back(1), p.push_back(high(rng));
}

// Ten epochs: losses falling to a plateau, small train/val gap, spread-out attention.
inline std::vector<EpochSpec> healthy_history() {
  std::vector<EpochSpec> h;
  for (int e = 0; e < 10; ++e) {
    const double loss = 0.3 + 0.4 * std::exp(-0.5 * e);
    h.push_back({loss - 0.05, loss, 0.7 + 0.02 * e, 0.3, 4.0, 0.8});
  }
  return h;
}

inline FoldSpec healthy_fold(std::mt19937& rng, int fold) {
  FoldSpec f;
  f.fold = fold;
  healthy_scores(rng, 5, 9, f.test_labels, f.test_p);
  healthy_scores(rng, 3, 5, f.val_labels, f.val_p);
  f.epochs = healthy_history();
  f.best_epoch = 8;
  return f;
}

}  // namespace fixture
