#pragma once
// The output forms of an evaluation (DESIGN §5): JSON (with the raw counts that
// `vmoe eval --merge` reads back), one-header-line CSV, and plain text.
#include <string>

#include <nlohmann/json.hpp>

#include "tasks/evaluate.hpp"

namespace vmoe {

// {"model", "data", "routing", "capacity_factor", "images", "top1", "top5", "dropped": [per
// MoE layer], "images_per_s", ... , "counts": {raw counts}}.
nlohmann::json eval_to_json(const EvalResult& r);
// Reads what eval_to_json wrote; `what` (a file name) prefixes errors.
EvalResult eval_from_json(const nlohmann::json& j, const std::string& what);
EvalResult read_eval_json(const std::string& path);

// The same columns whatever the model, so `tail -n +2` of many runs concatenates.
std::string eval_csv_header();
std::string eval_csv_row(const EvalResult& r);

std::string eval_text(const EvalResult& r);

}  // namespace vmoe
