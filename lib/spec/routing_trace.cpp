#include "spec/routing_trace.hpp"

#include "spec/router.hpp"

namespace vmoe {

double MoeLayerTrace::dropped_fraction(int image) const {
  if (!router->drops() || tokens_per_image == 0) return 0.0;
  int dropped = 0;
  for (int t = 0; t < tokens_per_image; ++t) dropped += times_taken.at(static_cast<size_t>(image) * tokens_per_image + t) == 0;
  return static_cast<double>(dropped) / tokens_per_image;
}

double MoeLayerTrace::dropped_choice_fraction(int image) const {
  if (k == 0 || tokens_per_image == 0) return 0.0;
  int dropped = 0;
  const size_t begin = static_cast<size_t>(image) * tokens_per_image * k;
  for (size_t i = begin; i < begin + static_cast<size_t>(tokens_per_image) * k; ++i) dropped += !choice_kept.at(i);
  return static_cast<double>(dropped) / (tokens_per_image * k);
}

}  // namespace vmoe
