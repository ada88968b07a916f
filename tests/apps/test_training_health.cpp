// Training health (apps/train/health.h), the attention record (apps/train/fold_records.h) and the learning-rate
// range test's suggestion (apps/train/lr_find.h): the figures follow from their definitions on hand-made inputs,
// the warning fires when and only when training is flat after warm-up and names what it sees, and the suggestion
// is the minimum of the smoothed loss away from the ends of the range.
#include <cmath>
#include <string>

#include "apps/train/fold_records.h"
#include "apps/train/health.h"
#include "apps/train/lr_find.h"
#include "tests/test_util.h"

using namespace dsmil;
using json = nlohmann::json;

namespace {

struct TwoGroups : nn::Module {
  Variable stem{test::random_tensor({3, 4}), true}, head{test::random_tensor({5}), true};
  TwoGroups() {
    register_parameter("encoder.stem.conv.weight", stem, true);
    register_parameter("head.bag_classifier.bias", head, false);
  }
};

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

}  // namespace

TEST_CASE("parameters are grouped by encoder stage and head") {
  CHECK(app::parameter_group("encoder.stem.conv.weight") == "stem");
  CHECK(app::parameter_group("encoder.layer3.1.bn2.bias") == "layer3");
  CHECK(app::parameter_group("head.gate_V.weight") == "head");
}

TEST_CASE("an epoch's health record: gradient norms, clipped steps, logit spread, update ratios, zero ReLU outputs") {
  app::EpochHealth health(1.0);
  for (double g : {0.5, 2.0, 3.0, 0.9}) health.add_step(g);
  for (double m : {-1.0, 1.0, 3.0}) health.add_bag_margin(m);

  TwoGroups model;
  const std::vector<float> stem_before = model.stem.value().to_vector();
  health.weights_before_step(model.parameters());
  const Tensor step = test::random_tensor({3, 4}, -0.01f, 0.01f);
  ops::axpy_(model.stem.value(), 1.0f, step);
  health.weights_after_step(model.parameters());
  health.last_stage(Tensor::from_vector({2, 4}, {0, 1, 0, 2, 0, 0, 3, 4}));

  const json record = health.record();
  CHECK(record["grad_norm"]["mean"].get<double>() == doctest::Approx(1.6));
  CHECK(record["grad_norm"]["max"].get<double>() == 3.0);
  CHECK(record["grad_norm"]["clipped_fraction"].get<double>() == 0.5);
  CHECK(record["logit_spread"].get<double>() == doctest::Approx(2.0));  // sample std of -1, 1, 3
  CHECK(record["update_ratio"]["stem"].get<double>() == doctest::Approx(norm(step.to_vector()) / norm(stem_before)));
  CHECK(record["update_ratio"]["head"].get<double>() == 0.0);
  CHECK(record["relu_zero_fraction"].get<double>() == doctest::Approx(0.5));
}

TEST_CASE("the flat-training warning: only after warm-up plus three epochs, only below 0.6, naming what it sees") {
  const json collapsed = {{"val_logit_spread", 0.01},
                          {"update_ratio", {{"stem", 2e-2}, {"layer1", 3e-2}, {"head", 1e-3}}},
                          {"grad_norm", {{"mean", 3.0}, {"median", 2.5}, {"max", 9.0}, {"clipped_fraction", 0.9}}},
                          {"relu_zero_fraction", 0.95}};
  const json flat = {{"auc", 0.52}, {"recall_hgg", 0.03}, {"recall_lgg", 0.97}};
  app::RunConfig config;
  config.warmup_epochs = 2.0;
  config.lr = 3e-4;
  config.case_sampling = data::CaseSampling::weighted;
  config.bags_per_step = 2;
  CHECK(app::flat_training_warning(4, config, flat, collapsed).empty());                // warm-up + 2
  CHECK(app::flat_training_warning(5, config, {{"auc", 0.62}}, collapsed).empty());     // learning
  CHECK(app::flat_training_warning(5, config, {{"auc", nullptr}}, collapsed).empty());  // one class seen
  const std::string text = app::flat_training_warning(5, config, flat, collapsed);
  CAPTURE(text);
  CHECK(text.find("training AUC 0.520 at epoch 5") != std::string::npos);
  CHECK(text.find("nearly every training bag LGG (HGG recall 0.03, LGG recall 0.97)") != std::string::npos);
  CHECK(text.find("so 50% of the steps of 2 bags hold a single class: train.case_sampling = \"balanced\" gives "
                  "every step both classes") != std::string::npos);
  CHECK(text.find("spread 0.010") != std::string::npos);
  CHECK(text.find("train.lr = 1.0e-04") != std::string::npos);
  CHECK(text.find("clipped in 90%") != std::string::npos);
  CHECK(text.find("95% of the encoder's last-stage ReLU outputs") != std::string::npos);

  config.bags_per_step = 4;
  CHECK(app::flat_training_warning(5, config, flat, collapsed).find("so 12% of the steps of 4 bags") !=
        std::string::npos);
  config.case_sampling = data::CaseSampling::balanced;
  const std::string balanced = app::flat_training_warning(5, config, flat, collapsed);
  CAPTURE(balanced);
  CHECK(balanced.find("every step holds both classes (train.case_sampling = \"balanced\"), and such a plateau ends") !=
        std::string::npos);
  CHECK(balanced.find("gives every step both classes") == std::string::npos);

  const json healthy = {{"val_logit_spread", 0.4},
                        {"update_ratio", {{"stem", 5e-4}, {"head", 1e-3}}},
                        {"grad_norm", {{"mean", 0.8}, {"median", 0.7}, {"max", 1.5}, {"clipped_fraction", 0.1}}},
                        {"relu_zero_fraction", 0.5}};
  config.lr = 1e-4;
  const std::string plain =
      app::flat_training_warning(6, config, {{"auc", 0.55}, {"recall_hgg", 0.6}, {"recall_lgg", 0.45}}, healthy);
  CAPTURE(plain);
  CHECK(plain.find("show nothing abnormal") != std::string::npos);
}

TEST_CASE("the attention record: weight on slabs holding tumour and their share, over the cases with a segmentation") {
  const std::vector<uint8_t> seg_voxel{1};
  const auto case_volume = [&](std::vector<uint8_t> tumour_slices, bool with_seg) {
    data::CaseVolume c;
    c.grid = {8, 1, 1};
    c.slice_has_tumour = std::move(tumour_slices);
    if (with_seg) c.seg = seg_voxel;
    return c;
  };
  const std::vector<data::CaseVolume> cohort{case_volume({0, 0, 0, 1, 1, 0, 0, 0}, true),
                                             case_volume({0, 0, 0, 1, 1, 0, 0, 0}, false),
                                             case_volume({1, 0, 0, 0, 0, 0, 0, 0}, true)};
  const auto prediction = [](int index, std::vector<int> starts, std::vector<float> attention,
                             std::vector<float> selection) {
    app::CasePrediction p;
    p.case_index = index;
    p.starts = std::move(starts);
    p.attention = std::move(attention);
    p.selection = std::move(selection);
    p.margins.assign(p.starts.size(), 0.5f);
    return p;
  };
  // Slabs of 2 slices. Case 0: slabs at 2 and 4 hold tumour (share 0.5), weight 0.6 + 0.2 on them, the critical
  // instance (start 2) in tumour. Case 1 has no segmentation and is left out. Case 2: the slab at 0 holds tumour
  // (share 0.5), weight 0.3 on it, the critical instance (start 4) outside.
  const std::vector<app::CasePrediction> preds{prediction(0, {0, 2, 4, 6}, {0.1f, 0.6f, 0.2f, 0.1f}, {0, 1, 0, 0}),
                                               prediction(1, {0, 2, 4, 6}, {1, 0, 0, 0}, {1, 0, 0, 0}),
                                               prediction(2, {0, 4}, {0.3f, 0.7f}, {0, 1})};
  const json record = app::attention_diagnostics(preds, cohort, 2);
  CHECK(record.at("attention_tumour_mass").get<double>() == doctest::Approx((0.8 + 0.3) / 2));
  CHECK(record.at("tumour_slab_share").get<double>() == doctest::Approx(0.5));
  CHECK(record.at("critical_tumour_share").get<double>() == doctest::Approx(0.5));

  const json without_seg = app::attention_diagnostics({preds[1]}, cohort, 2);
  CHECK(without_seg.at("attention_tumour_mass").is_null());
  CHECK(without_seg.at("tumour_slab_share").is_null());
}

TEST_CASE("lr-find suggests the learning rate of the lowest smoothed loss, away from the ends of the range") {
  app::LrFindResult result;
  // A valley at 1e-3 and a dip at the very first point (the young average's noise) that must be ignored.
  for (int i = 0; i <= 60; ++i) {
    const double log_lr = -7.0 + i * 0.1;
    const double smoothed = i == 0 ? 0.0 : 1.0 + std::pow(log_lr + 3.0, 2.0);
    result.points.push_back({std::pow(10.0, log_lr), smoothed, smoothed});
  }
  app::suggest_lr(result);
  CHECK(result.suggested_lr == doctest::Approx(1e-3));
  app::LrFindResult too_short;
  too_short.points.resize(2);
  CHECK_THROWS_AS(app::suggest_lr(too_short), Error);
}
