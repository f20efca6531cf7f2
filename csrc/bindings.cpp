// sparsekit._native: the kernels exposed to Python for tests and tooling.
#include <pybind11/pybind11.h>
#include "kernels/kernels.h"
namespace py = pybind11;
PYBIND11_MODULE(_native, m) {
  m.def("available_isas", []() {
    py::list out;
    for (sk::Isa isa : {sk::Isa::ref, sk::Isa::avx2, sk::Isa::avx512, sk::Isa::neon})
      if (sk::kernels_for(isa)) out.append(sk::isa_name(isa));
    return out;
  });
}
