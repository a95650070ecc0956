// Python bindings (`megatron.data._cpp`) of the native data helpers in csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <stdexcept>
#include <vector>
#include <string>

#include "indexed_writer.h"
#include "packing.h"

namespace py = pybind11;

namespace {

// The tokens of `array` as a contiguous buffer whose element size matches the writer's dtype.
py::buffer_info token_buffer(const xp3::IndexedWriter& writer, const py::array& array) {
  if (!(array.flags() & py::array::c_style)) {
    throw std::invalid_argument("token array must be C-contiguous");
  }
  py::buffer_info info = array.request();
  if (info.ndim != 1) throw std::invalid_argument("token array must be one-dimensional");
  if (info.itemsize != xp3::itemsize_of_code(writer.dtype_code())) {
    throw std::invalid_argument("token array has " + std::to_string(info.itemsize) +
                                "-byte items; this dataset's dtype code " +
                                std::to_string(writer.dtype_code()) + " needs " +
                                std::to_string(xp3::itemsize_of_code(writer.dtype_code())));
  }
  return info;
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& values) {
  py::array_t<T> array(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), array.mutable_data());
  return array;
}

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

py::tuple pack_pairs(const Int64Array& order, const Int32Array& lengths, int64_t capacity,
                     const std::string& strategy, int64_t window) {
  const int64_t* order_data = order.data();
  const int64_t n = order.size();
  for (int64_t i = 0; i < n; ++i) {
    if (order_data[i] < 0 || order_data[i] >= lengths.size()) {
      throw std::invalid_argument("order holds pair " + std::to_string(order_data[i]) +
                                  " but there are " + std::to_string(lengths.size()) + " pairs");
    }
  }
  xp3::PackedRows rows;
  {
    py::gil_scoped_release release;
    if (strategy == "greedy") {
      rows = xp3::pack_greedy(order_data, n, lengths.data(), capacity);
    } else if (strategy == "best_fit") {
      rows = xp3::pack_best_fit(order_data, n, lengths.data(), capacity, window);
    } else {
      throw std::invalid_argument("unknown packing strategy '" + strategy +
                                  "' (greedy or best_fit)");
    }
  }
  return py::make_tuple(to_numpy(rows.offsets), to_numpy(rows.pairs));
}

py::tuple build_blending_indices(
    const py::array_t<double, py::array::c_style | py::array::forcecast>& weights, int64_t size) {
  py::array_t<int16_t> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  const double* weight_data = weights.data();
  int16_t* index_data = dataset_index.mutable_data();
  int64_t* sample_data = dataset_sample_index.mutable_data();
  const int64_t num_datasets = weights.size();
  {
    py::gil_scoped_release release;
    xp3::build_blending_indices(weight_data, num_datasets, size, index_data, sample_data);
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

}  // namespace

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "Native helpers of megatron.data: the MMIDIDX writer, packing and blending indices.";

  m.def("pack_pairs", &pack_pairs, py::arg("order"), py::arg("lengths"), py::arg("capacity"),
        py::arg("strategy"), py::arg("window") = 1024,
        "Pack pairs (ids in `order`, lengths by id) into rows of `capacity` tokens; returns "
        "(offsets, pairs): row r holds pairs[offsets[r]:offsets[r+1]].");
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"),
        "For `size` samples: (dataset index, sample index within that dataset), each sample "
        "going to the dataset whose count lags its weight the most.");

  m.def("itemsize_of_code", &xp3::itemsize_of_code, py::arg("dtype_code"));

  py::class_<xp3::IndexedWriter>(m, "IndexedWriter")
      .def(py::init<const std::string&, int>(), py::arg("bin_path"), py::arg("dtype_code"))
      .def(
          "add_sequence",
          [](xp3::IndexedWriter& self, const py::array& tokens) {
            py::buffer_info info = token_buffer(self, tokens);
            py::gil_scoped_release release;
            self.add_sequence(info.ptr, info.shape[0]);
          },
          py::arg("tokens"), "Append one sequence (a 1-D array in the dataset's dtype).")
      .def("end_document", &xp3::IndexedWriter::end_document)
      .def(
          "add_documents",
          [](xp3::IndexedWriter& self, const py::array& tokens,
             const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lengths) {
            py::buffer_info info = token_buffer(self, tokens);
            if (lengths.ndim() != 1) throw std::invalid_argument("lengths must be 1-D");
            int64_t total = 0;
            for (py::ssize_t i = 0; i < lengths.shape(0); ++i) {
              if (lengths.data()[i] < 0) throw std::invalid_argument("negative length");
              total += lengths.data()[i];
            }
            if (total != info.shape[0]) {
              throw std::invalid_argument("lengths sum to " + std::to_string(total) +
                                          " but the token array holds " +
                                          std::to_string(info.shape[0]));
            }
            const int64_t* length_data = lengths.data();
            const int64_t n = lengths.shape(0);
            py::gil_scoped_release release;
            self.add_documents(info.ptr, length_data, n);
          },
          py::arg("tokens"), py::arg("lengths"),
          "Append documents of one sequence each, laid out back to back in `tokens`.")
      .def("merge", &xp3::IndexedWriter::merge, py::arg("prefix"),
           py::call_guard<py::gil_scoped_release>())
      .def("finalize", &xp3::IndexedWriter::finalize, py::arg("idx_path"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("dtype_code", &xp3::IndexedWriter::dtype_code)
      .def_property_readonly("num_sequences", &xp3::IndexedWriter::num_sequences)
      .def_property_readonly("num_documents", &xp3::IndexedWriter::num_documents)
      .def_property_readonly("num_tokens", &xp3::IndexedWriter::num_tokens);
}
