// Implementation of the MMIDIDX writer and index reader declared in indexed_writer.h.
#include "indexed_writer.h"

#include <cerrno>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

namespace xp3 {
namespace {

const char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
const uint64_t kVersion = 1;
const size_t kBufferBytes = 8 << 20;

std::runtime_error io_error(const std::string& what, const std::string& path) {
  return std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

File open_file(const std::string& path, const char* mode) {
  File f(std::fopen(path.c_str(), mode));
  if (!f) throw io_error("cannot open", path);
  return f;
}

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes && std::fwrite(data, 1, bytes, f) != bytes) throw io_error("cannot write", path);
}

void read_all(std::FILE* f, void* data, size_t bytes, const std::string& path) {
  if (bytes && std::fread(data, 1, bytes, f) != bytes) {
    throw std::runtime_error(path + ": index file is truncated");
  }
}

template <typename T>
T read_scalar(std::FILE* f, const std::string& path) {
  T value;
  read_all(f, &value, sizeof(T), path);
  return value;
}

}  // namespace

int itemsize_of_code(int dtype_code) {
  switch (dtype_code) {
    case 1: case 2: return 1;   // uint8, int8
    case 3: case 8: return 2;   // int16, uint16
    case 4: case 7: return 4;   // int32, float32
    case 5: case 6: return 8;   // int64, float64
    default:
      throw std::runtime_error("unknown MMIDIDX dtype code " + std::to_string(dtype_code) +
                               " (known: 1..8)");
  }
}

IndexContents read_index(const std::string& idx_path) {
  File f = open_file(idx_path, "rb");
  char magic[9];
  read_all(f.get(), magic, sizeof magic, idx_path);
  if (std::memcmp(magic, kMagic, sizeof magic) != 0) {
    throw std::runtime_error(idx_path + ": not an MMIDIDX index (wrong magic)");
  }
  const auto version = read_scalar<uint64_t>(f.get(), idx_path);
  if (version != kVersion) {
    throw std::runtime_error(idx_path + ": unsupported MMIDIDX version " +
                             std::to_string(version) + " (expected 1)");
  }
  IndexContents index;
  index.dtype_code = read_scalar<uint8_t>(f.get(), idx_path);
  try {
    itemsize_of_code(index.dtype_code);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(idx_path + ": " + e.what());
  }
  const auto num_sequences = read_scalar<uint64_t>(f.get(), idx_path);
  const auto num_doc_idx = read_scalar<uint64_t>(f.get(), idx_path);
  index.sizes.resize(num_sequences);
  index.pointers.resize(num_sequences);
  index.doc_idx.resize(num_doc_idx);
  read_all(f.get(), index.sizes.data(), num_sequences * sizeof(int32_t), idx_path);
  read_all(f.get(), index.pointers.data(), num_sequences * sizeof(int64_t), idx_path);
  read_all(f.get(), index.doc_idx.data(), num_doc_idx * sizeof(int64_t), idx_path);
  return index;
}

IndexedWriter::IndexedWriter(const std::string& bin_path, int dtype_code)
    : bin_path_(bin_path),
      buffer_(kBufferBytes),
      dtype_code_(dtype_code),
      itemsize_(itemsize_of_code(dtype_code)) {
  bin_ = std::fopen(bin_path.c_str(), "wb");
  if (!bin_) throw io_error("cannot open", bin_path);
  std::setvbuf(bin_, buffer_.data(), _IOFBF, buffer_.size());
}

IndexedWriter::~IndexedWriter() {
  if (bin_) std::fclose(bin_);
}

void IndexedWriter::check_open() const {
  if (!bin_) throw std::runtime_error(bin_path_ + ": writer is already finalized");
}

void IndexedWriter::write_bin(const void* data, size_t bytes) {
  write_all(bin_, data, bytes, bin_path_);
  bin_bytes_ += static_cast<int64_t>(bytes);
}

void IndexedWriter::add_sequence(const void* data, int64_t count) {
  check_open();
  if (count < 0 || count > std::numeric_limits<int32_t>::max()) {
    throw std::runtime_error("sequence length " + std::to_string(count) +
                             " does not fit the int32 sizes of MMIDIDX");
  }
  write_bin(data, static_cast<size_t>(count) * itemsize_);
  sizes_.push_back(static_cast<int32_t>(count));
}

void IndexedWriter::end_document() {
  check_open();
  doc_idx_.push_back(num_sequences());
}

void IndexedWriter::add_documents(const void* data, const int64_t* lengths, int64_t n) {
  const char* cursor = static_cast<const char*>(data);
  for (int64_t i = 0; i < n; ++i) {
    add_sequence(cursor, lengths[i]);
    end_document();
    cursor += lengths[i] * itemsize_;
  }
}

void IndexedWriter::merge(const std::string& prefix) {
  check_open();
  const std::string idx_path = prefix + ".idx";
  const std::string bin_path = prefix + ".bin";
  const IndexContents other = read_index(idx_path);
  if (other.dtype_code != dtype_code_) {
    throw std::runtime_error(idx_path + ": dtype code " + std::to_string(other.dtype_code) +
                             " differs from the merged output's " + std::to_string(dtype_code_));
  }
  if (other.doc_idx.empty() || other.doc_idx.front() != 0) {
    throw std::runtime_error(idx_path + ": document index does not start at 0");
  }
  const int64_t offset = num_sequences();
  sizes_.insert(sizes_.end(), other.sizes.begin(), other.sizes.end());
  for (size_t i = 1; i < other.doc_idx.size(); ++i) doc_idx_.push_back(offset + other.doc_idx[i]);

  int64_t expected_bytes = 0;
  for (int32_t size : other.sizes) expected_bytes += static_cast<int64_t>(size) * itemsize_;
  File in = open_file(bin_path, "rb");
  std::vector<char> chunk(kBufferBytes);
  int64_t copied = 0;
  size_t got;
  while ((got = std::fread(chunk.data(), 1, chunk.size(), in.get())) > 0) {
    write_bin(chunk.data(), got);
    copied += static_cast<int64_t>(got);
  }
  if (copied != expected_bytes) {
    throw std::runtime_error(bin_path + ": holds " + std::to_string(copied) +
                             " bytes but its index describes " + std::to_string(expected_bytes));
  }
}

void IndexedWriter::finalize(const std::string& idx_path) {
  check_open();
  const int flush_failed = std::fclose(bin_);
  bin_ = nullptr;
  if (flush_failed != 0) throw io_error("cannot write", bin_path_);

  std::vector<int64_t> pointers(sizes_.size());
  int64_t address = 0;
  for (size_t i = 0; i < sizes_.size(); ++i) {
    pointers[i] = address;
    address += static_cast<int64_t>(sizes_[i]) * itemsize_;
  }
  File idx = open_file(idx_path, "wb");
  const uint8_t code = static_cast<uint8_t>(dtype_code_);
  const uint64_t num_sequences = sizes_.size();
  const uint64_t num_doc_idx = doc_idx_.size();
  write_all(idx.get(), kMagic, sizeof kMagic, idx_path);
  write_all(idx.get(), &kVersion, sizeof kVersion, idx_path);
  write_all(idx.get(), &code, sizeof code, idx_path);
  write_all(idx.get(), &num_sequences, sizeof num_sequences, idx_path);
  write_all(idx.get(), &num_doc_idx, sizeof num_doc_idx, idx_path);
  write_all(idx.get(), sizes_.data(), sizes_.size() * sizeof(int32_t), idx_path);
  write_all(idx.get(), pointers.data(), pointers.size() * sizeof(int64_t), idx_path);
  write_all(idx.get(), doc_idx_.data(), doc_idx_.size() * sizeof(int64_t), idx_path);
  if (std::fclose(idx.release()) != 0) throw io_error("cannot write", idx_path);
}

}  // namespace xp3
