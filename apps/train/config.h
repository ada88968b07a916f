// The run configuration: every knob of data, model, loss, training, protocol and runtime, read from a
// TOML file (configs/*.toml) with `--set section.key=value` overrides, and written back resolved into
// each run directory. Defaults are configs/recommended-v2 (DESIGN section 5).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "apps/report/metrics.h"
#include "data/cases.h"
#include "data/sampling.h"
#include "mil/dual_stream.h"
#include "nn/optim.h"

namespace dsmil::app {

// run.precision: `automatic` (spelt "auto") becomes bf16 on a GPU and fp32 on the CPU (resolve_precision).
enum class Precision { automatic, fp32, bf16 };
enum class ClassWeights { none, balanced };
// train.monitor: the validation figure that selects the model and stops early (loss: lower is better).
enum class Monitor { auc, balanced_accuracy, min_class_recall, loss };

// The config's spelling of a choice ("bf16", "topk", "stratified", ...), as TOML files, --set and config.toml
// write it: for Precision, ClassWeights, Monitor, mil::Pooling, mil::Attention, data::InstanceSampling,
// data::CaseSampling, data::BadCasePolicy, report::ThresholdMethod, ConvFolding and ConvKernel.
template <typename Choice>
std::string choice_name(Choice value);

struct RunConfig {
  std::string name = "recommended-v2";

  // data
  std::string data_root;             // BraTS folder or manifest CSV
  std::string cache_dir = "cache";   // preprocessing cache ("" = none)
  std::string grid = "128,128,128";  // D,H,W after preprocessing
  data::BadCasePolicy on_bad_case = data::BadCasePolicy::fail;
  bool resident = true;  // GPU runs: the cohort on the device, bags gathered there

  // model (DESIGN section 3)
  int depth = 18, width = 64, slab_depth = 3;
  double drop_path = 0.1;
  bool zero_init_residual = false;     // each residual branch's last BN scale starts at 0
  bool zero_init_classifiers = false;  // the instance and bag classifiers start at 0 (first logits 0)
  mil::Pooling pooling = mil::Pooling::TopK;
  int topk = 4;
  mil::Attention attention = mil::Attention::Gated;
  double attention_temperature = 1.0;
  double feature_dropout = 0.6;
  double instance_dropout = 0.1;

  // loss (DESIGN section 4)
  double label_smoothing = 0.2;
  double focal_gamma = 2.0;
  ClassWeights class_weights = ClassWeights::balanced;
  double stream_weight = 0.5;   // lambda
  double entropy_weight = 0.0;  // beta: loss - beta * mean attention entropy (0: off)

  // training (DESIGN section 5)
  int epochs = 40, min_epochs = 10, patience = 10;
  // Model selection and early stopping start at the first epoch whose training AUC reaches this (0: at once).
  double selection_train_auc = 0.75;
  Monitor monitor = Monitor::min_class_recall;
  int bags_per_step = 2;
  int instances = 16;       // n per training bag
  int eval_instances = 16;  // n per evaluation bag (fixed sampler)
  data::InstanceSampling instance_sampling = data::InstanceSampling::stratified;
  data::CaseSampling case_sampling = data::CaseSampling::weighted;
  double lr = 1e-4, weight_decay = 1e-4;
  double warmup_epochs = 2.0;
  double clip_grad = 1.0;                 // global-norm clip; 0 = off
  double ema_decay = 0.999;               // 0 = no EMA model
  double tau_start = 1.0, tau_end = 0.1;  // soft pooling temperature, annealed geometrically
  bool augment = true;
  bool sync_batchnorm = false;  // data-parallel runs: batch-norm statistics over every rank's bags
  report::ThresholdMethod threshold = report::ThresholdMethod::youden;

  // protocol
  int folds = 5;
  double inner_val = 0.15;
  int repeats = 1;
  bool select_on_test = false;
  int64_t seed = 2026;

  // runtime
  std::string device = "auto";  // auto | cpu | cuda
  Precision precision = Precision::automatic;
  bool strict_fp32 = false;
  bool deterministic = false;
  ConvFolding conv_fold = ConvFolding::measured;    // the stem's space-to-depth lowering (GPU)
  ConvKernel conv16_kernel = ConvKernel::measured;  // the folded stem's forward (GPU, bf16)
  // GPU training steps recorded once as a CUDA graph and replayed (each step's inputs, seed and constants written
  // into the recording's memory first); a step that cannot be recorded is queued as it is, and says why once.
  bool cuda_graph = true;
  int plot_every = 0;  // 0: plots only at the end
  // last.ckpt (the resume point) is written once this many seconds have passed since the last one, and at a
  // fold's last epoch (0: every epoch). A killed run resumes from it, redoing the epochs after it.
  double checkpoint_seconds = 30.0;
  int threads = 0;  // CPU threads; 0 = all cores

  mil::ModelConfig model_config() const;
  mil::LossConfig loss_config() const;
  nn::AdamWConfig optimizer_config() const;  // the global-norm clip (clip_grad) included
  MathMode math() const;  // strict_fp32, deterministic, conv_fold and conv16_kernel as the backend's MathMode
};

// A key whose value is one of a set of names, held as an enum: `set` parses a name (throwing dsmil::Error that
// lists the names), `get` spells the value.
struct ChoiceField {
  std::function<std::string()> get;
  std::function<void(const std::string&)> set;
};
using ConfigField = std::variant<int*, int64_t*, double*, bool*, std::string*, ChoiceField>;
struct NamedField {
  std::string key;  // "section.key"
  ConfigField field;
};
std::vector<NamedField> config_fields(RunConfig& config);

// Resolves a config name ("tiny", "configs/tiny", a path) to a file: as given, with ".toml", in ./configs/, then
// among the configs shipped with this binary: share/dsmil/configs/ beside the bin/ it was installed in (a release
// archive), else the configs/ of the source tree it was built from. The error lists every path tried.
std::filesystem::path find_config_file(const std::string& name_or_path);
// Reads a config file over the defaults; unknown keys and wrong types are errors naming the key.
RunConfig load_config(const std::filesystem::path& file);
// The same from TOML text (e.g. the resolved config a checkpoint carries); `origin` names it in errors.
RunConfig parse_config(const std::string& text, const std::string& origin);
// Applies "section.key=value" (value in TOML syntax; bare words are strings).
void apply_override(RunConfig& config, const std::string& assignment);
// Makes run.precision concrete for a run on `device`: `auto` is bf16 on a GPU, fp32 on the CPU; bf16 on the
// CPU is an error (its backend computes in fp32).
void resolve_precision(RunConfig& config, Device device);
// Checks ranges (choices are checked as they are read); throws dsmil::Error naming the key.
void validate_config(const RunConfig& config);
std::string config_to_toml(const RunConfig& config);
// "key: A vs B" for every key whose value differs between two configs (empty: the same config).
std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b);

}  // namespace dsmil::app
