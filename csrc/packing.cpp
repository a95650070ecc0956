// Implementation of the packers and the blending index declared in packing.h.
#include "packing.h"

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace xp3 {
namespace {

int32_t checked_length(const int32_t* lengths, int64_t pair, int64_t capacity) {
  const int32_t length = lengths[pair];
  if (length < 1 || length > capacity) {
    throw std::invalid_argument("pair " + std::to_string(pair) + " has length " +
                                std::to_string(length) + ", outside [1, " +
                                std::to_string(capacity) + "]");
  }
  return length;
}

}  // namespace

PackedRows pack_greedy(const int64_t* order, int64_t n, const int32_t* lengths, int64_t capacity) {
  PackedRows rows;
  int64_t used = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pair = order[i];
    const int32_t length = checked_length(lengths, pair, capacity);
    if (used + length > capacity) {
      rows.offsets.push_back(static_cast<int64_t>(rows.pairs.size()));
      used = 0;
    }
    rows.pairs.push_back(pair);
    used += length;
  }
  if (used > 0) rows.offsets.push_back(static_cast<int64_t>(rows.pairs.size()));
  return rows;
}

PackedRows pack_best_fit(const int64_t* order, int64_t n, const int32_t* lengths, int64_t capacity,
                         int64_t window) {
  if (window < 1) throw std::invalid_argument("window must be at least 1");
  PackedRows rows;
  std::vector<std::vector<int64_t>> slots;  // the pairs of each open row
  std::vector<int64_t> free_slots;
  std::set<std::pair<int64_t, int64_t>> by_room;  // (room left, slot) of every open row

  auto close = [&](std::set<std::pair<int64_t, int64_t>>::iterator it) {
    const int64_t slot = it->second;
    by_room.erase(it);
    rows.pairs.insert(rows.pairs.end(), slots[slot].begin(), slots[slot].end());
    rows.offsets.push_back(static_cast<int64_t>(rows.pairs.size()));
    slots[slot].clear();
    free_slots.push_back(slot);
  };

  std::vector<int64_t> chunk;
  for (int64_t start = 0; start < n; start += window) {
    chunk.assign(order + start, order + std::min(n, start + window));
    std::stable_sort(chunk.begin(), chunk.end(), [lengths](int64_t a, int64_t b) {
      return lengths[a] > lengths[b];
    });
    for (const int64_t pair : chunk) {
      const int32_t length = checked_length(lengths, pair, capacity);
      auto fit = by_room.lower_bound({length, -1});  // the tightest row with room enough
      int64_t slot, room;
      if (fit != by_room.end()) {
        slot = fit->second;
        room = fit->first;
        by_room.erase(fit);
      } else {
        if (static_cast<int64_t>(by_room.size()) == window) close(by_room.begin());
        if (free_slots.empty()) {
          free_slots.push_back(static_cast<int64_t>(slots.size()));
          slots.emplace_back();
        }
        slot = free_slots.back();
        free_slots.pop_back();
        room = capacity;
      }
      slots[slot].push_back(pair);
      room -= length;
      auto placed = by_room.insert({room, slot}).first;
      if (room == 0) close(placed);
    }
  }
  while (!by_room.empty()) close(by_room.begin());
  return rows;
}

void build_blending_indices(const double* weights, int64_t num_datasets, int64_t size,
                            int16_t* dataset_index, int64_t* dataset_sample_index) {
  if (num_datasets < 1 || num_datasets > 32767) {
    throw std::invalid_argument("blending needs between 1 and 32767 datasets");
  }
  std::vector<int64_t> counts(num_datasets, 0);
  for (int64_t sample = 0; sample < size; ++sample) {
    const double target = static_cast<double>(sample + 1);
    int64_t best = 0;
    double best_deficit = weights[0] * target - static_cast<double>(counts[0]);
    for (int64_t d = 1; d < num_datasets; ++d) {
      const double deficit = weights[d] * target - static_cast<double>(counts[d]);
      if (deficit > best_deficit) {
        best = d;
        best_deficit = deficit;
      }
    }
    dataset_index[sample] = static_cast<int16_t>(best);
    dataset_sample_index[sample] = counts[best]++;
  }
}

}  // namespace xp3
