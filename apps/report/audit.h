// The audit of a cross-validation: reads the fold files of one or more runs, writes cv_summary.json,
// AUDIT.md (verdict, per-fold summary, CV summary, anomalies, recommendations from the anomalies and the
// run's config.toml, consistency, plots) and plots/.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "apps/report/anomalies.h"
#include "apps/report/consistency.h"

namespace dsmil::report {

struct AuditOptions {
  std::vector<std::filesystem::path> inputs;  // run directories and/or fold directories
  std::filesystem::path out_dir;              // where cv_summary.json, AUDIT.md and plots/ go
  AnomalyRules rules;
  bool write_plots = true;
};

struct AuditResult {
  std::filesystem::path audit_md, cv_summary_json;
  int checks = 0, failed_checks = 0;
  int anomalies = 0;
  std::vector<std::string> failures;  // one line per failed check
  bool consistent() const { return failed_checks == 0; }
};

// Runs the audit and writes its files. Throws FormatError for a missing or malformed input file; a
// consistency failure does not throw: the files are written, and the result counts the failures (the
// `dsmil audit` command turns them into a non-zero exit).
AuditResult run_audit(const AuditOptions& options);

// The audit of one run directory, written into it: what the training loop calls at the end of `cv`.
AuditResult write_cv_report(const std::filesystem::path& run_dir);

}  // namespace dsmil::report
