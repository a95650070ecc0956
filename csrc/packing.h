// Packing of whole (input, target) pairs into rows of fixed capacity, and the blending index
// that spreads global samples over datasets by weight.
#pragma once

#include <cstdint>
#include <vector>

namespace xp3 {

// Rows in compressed form: row r holds pairs[offsets[r] .. offsets[r+1]).
struct PackedRows {
  std::vector<int64_t> offsets{0};
  std::vector<int64_t> pairs;
};

// Greedy, as Megatron-DeepSpeed packs: fill the current row in `order` until the next pair does
// not fit, then start a new row. Every length must be in [1, capacity].
PackedRows pack_greedy(const int64_t* order, int64_t n, const int32_t* lengths, int64_t capacity);

// Best-fit decreasing over a sliding window: `order` is taken `window` pairs at a time, each
// chunk longest first; each pair goes to the open row it fills most tightly, at most `window`
// rows are open, and when none has room the fullest is closed first. Rows come out in the order
// they are closed; the input order stays random at the scale of a window. Every length must be
// in [1, capacity].
PackedRows pack_best_fit(const int64_t* order, int64_t n, const int32_t* lengths, int64_t capacity,
                         int64_t window);

// For `size` global samples, the dataset of each (the one whose count lags its weight the most,
// ties to the lowest index) and its running index within that dataset.
void build_blending_indices(const double* weights, int64_t num_datasets, int64_t size,
                            int16_t* dataset_index, int64_t* dataset_sample_index);

}  // namespace xp3
