// Writer of Megatron `MMIDIDX` (version 1) indexed datasets: a `.bin` of concatenated token
// arrays and an `.idx` holding the sequence sizes, byte pointers and document indices.
// The byte layout is the one Megatron-LM and megatron-core read and write.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace xp3 {

// Bytes per element of a Megatron dtype code (1 uint8 .. 8 uint16); throws on an unknown code.
int itemsize_of_code(int dtype_code);

// The parsed header and arrays of one `.idx` file.
struct IndexContents {
  int dtype_code = 0;
  std::vector<int32_t> sizes;
  std::vector<int64_t> pointers;
  std::vector<int64_t> doc_idx;
};

// Reads and validates an `.idx` file; throws std::runtime_error naming the file on any defect.
IndexContents read_index(const std::string& idx_path);

class IndexedWriter {
 public:
  IndexedWriter(const std::string& bin_path, int dtype_code);
  ~IndexedWriter();
  IndexedWriter(const IndexedWriter&) = delete;
  IndexedWriter& operator=(const IndexedWriter&) = delete;

  // Appends one sequence of `count` elements already in this writer's dtype.
  void add_sequence(const void* data, int64_t count);
  // Closes the current document: the sequences since the last call form one document.
  void end_document();
  // Appends `n` sequences laid out back to back in `data`, each one a whole document.
  void add_documents(const void* data, const int64_t* lengths, int64_t n);
  // Appends every sequence and document of the dataset at `prefix` (.bin/.idx), copying its
  // tokens byte for byte; its dtype must equal this writer's.
  void merge(const std::string& prefix);
  // Flushes and closes the `.bin`, then writes the `.idx` to `idx_path`.
  void finalize(const std::string& idx_path);

  int dtype_code() const { return dtype_code_; }
  int64_t num_sequences() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_idx_.size()) - 1; }
  int64_t num_tokens() const { return bin_bytes_ / itemsize_; }

 private:
  void write_bin(const void* data, size_t bytes);
  void check_open() const;

  std::string bin_path_;
  std::FILE* bin_ = nullptr;
  std::vector<char> buffer_;
  int dtype_code_;
  int itemsize_;
  int64_t bin_bytes_ = 0;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> doc_idx_{0};
};

}  // namespace xp3
