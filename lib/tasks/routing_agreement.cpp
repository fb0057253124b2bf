#include "tasks/routing_agreement.hpp"

#include "core/error.hpp"

namespace vmoe {

RoutingAgreement routing_agreement(const MoeLayerTrace& reference, const MoeLayerTrace& run) {
  if (reference.num_tokens() != run.num_tokens() || reference.k != run.k || reference.router != run.router ||
      reference.num_experts != run.num_experts)
    fail("routing agreement: the traces of block {} and block {} route different tokens or routers", reference.layer,
         run.layer);
  RoutingAgreement a;
  const int64_t N = run.num_tokens();
  if (run.k > 0) {
    const size_t choices = static_cast<size_t>(N) * run.k;
    if (reference.choice_expert.size() != choices || run.choice_expert.size() != choices ||
        reference.choice_kept.size() != choices || run.choice_kept.size() != choices)
      fail("routing agreement: block {} has no top-k choices recorded for every token", run.layer);
    a.tokens = N;
    for (int64_t n = 0; n < N; ++n) a.top1_same += reference.choice_expert[n * run.k] == run.choice_expert[n * run.k];
    a.decisions = static_cast<int64_t>(choices);
    for (size_t i = 0; i < choices; ++i) a.decisions_same += reference.choice_kept[i] == run.choice_kept[i];
    return a;
  }
  if (!run.expert_took.empty() || !reference.expert_took.empty()) {
    if (reference.expert_took.size() != run.expert_took.size())
      fail("routing agreement: block {} has expert choices for different tokens", run.layer);
    a.decisions = static_cast<int64_t>(run.expert_took.size());
    for (size_t i = 0; i < run.expert_took.size(); ++i) a.decisions_same += reference.expert_took[i] == run.expert_took[i];
  }
  return a;
}

}  // namespace vmoe
