#pragma once
// Wall time per stage of a forward pass, for `vmoe bench`, and the routed expert rows it
// processed. A null StageTimes* costs nothing; ScopedStage adds the scope's duration to
// one field.
#include <chrono>
#include <cstdint>

namespace vmoe {

struct StageTimes {
  double embedding = 0, attention = 0, norms = 0, router = 0, dispatch_combine = 0, experts = 0, dense_mlp = 0,
         head = 0;
  // Rows the routed experts processed (kept top-k choices, experts-choice or Soft-MoE
  // slots), summed over MoE layers: the work, not a time. Shared experts not included.
  int64_t expert_rows = 0;
  double total() const { return embedding + attention + norms + router + dispatch_combine + experts + dense_mlp + head; }
};

class ScopedStage {
 public:
  ScopedStage(StageTimes* times, double StageTimes::*field) : times_(times), field_(field) {
    if (times_) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedStage() {
    if (times_) times_->*field_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedStage(const ScopedStage&) = delete;
  ScopedStage& operator=(const ScopedStage&) = delete;

 private:
  StageTimes* times_;
  double StageTimes::*field_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace vmoe
