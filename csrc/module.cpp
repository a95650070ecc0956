// Python bindings (`megatron.data._cpp`) of the native data helpers in csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "indexed_writer.h"

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

}  // namespace

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "Native helpers of megatron.data: the MMIDIDX indexed-dataset writer.";

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
