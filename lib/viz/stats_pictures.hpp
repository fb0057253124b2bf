#pragma once
// Pictures of dataset-level routing statistics (`vmoe eval --routing-stats DIR`,
// docs/EVAL.md): per MoE layer a class x expert heatmap and a grid of position maps, plus
// one figure of specialisation against depth. Pure functions of RoutingStats; the same
// palette rules as the route pictures (experts by expert_colour, shares by viridis,
// Soft-MoE slot maps by inferno) and written by write_pictures.
#include <vector>

#include "tasks/routing_stats.hpp"
#include "viz/pictures.hpp"

namespace vmoe::viz {

// Rows = classes (names on the axis), columns = experts (Soft-MoE: slots), each row
// normalised to the class's tokens. At most max_rows classes and max_cols columns are
// drawn; the title says what was left out. File L<block>-class-expert.png.
Picture class_expert_heatmap(const RoutingStats& s, size_t layer, int max_rows = 60, int max_cols = 64);
// One small map over the patch grid per expert: the share of the tokens at each patch
// whose first choice is that expert (Soft-MoE: where each slot's dispatch mass comes
// from, each map scaled to its own maximum). At most max_maps maps. L<block>-positions.png.
Picture position_maps(const RoutingStats& s, size_t layer, int max_maps = 64);
// Class and position NMI against the block index. specialisation.png.
Picture specialisation_plot(const RoutingStats& s);

std::vector<Picture> routing_stats_pictures(const RoutingStats& s);

}  // namespace vmoe::viz
