// bindings.cpp — pybind11 layer for levit_kernels._C. Nothing but argument plumbing.
//
// Every kernel takes raw addresses (Python ints from tensor.data_ptr()), sizes, strides in
// elements and a thread count, and runs with the GIL released. All validation of shapes,
// dtypes, devices and strides happens in levit_kernels/cpu.py before an address gets here:
// this layer trusts its arguments.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention.h"
#include "cpu_features.h"
#include "forward.h"
#include "gemm.h"

namespace py = pybind11;
using levit::AttnArgs;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void set_isa(const std::string& name) {
  levit::Isa isa;
  if (!levit::isa_from_name(name, &isa))
    throw py::value_error("isa must be one of 'generic', 'avx2', 'avx512', got '" + name + "'");
  if (!levit::set_isa(isa))
    throw py::value_error("this CPU does not support the '" + name + "' path");
}

void attention(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t bias,
               std::uintptr_t out, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
               int64_t dk, int64_t dv, int64_t q_sb, int64_t q_sh, int64_t q_sn, int64_t k_sb,
               int64_t k_sh, int64_t k_sn, int64_t v_sb, int64_t v_sh, int64_t v_sn, float scale,
               bool hardswish, bool probs, int nthreads) {
  AttnArgs a{ptr<const float>(q), ptr<const float>(k), ptr<const float>(v), ptr<const float>(bias),
             batch, heads, nq, nk, dk, dv, q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn,
             scale, hardswish, probs, ptr<float>(out)};
  levit::attention(a, nthreads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "levit_kernels CPU kernels (raw-pointer interface; use levit_kernels.cpu)";
  using release = py::call_guard<py::gil_scoped_release>;

  m.def("isa", [] { return std::string(levit::isa_name(levit::active_isa())); },
        "The instruction-set path the kernels use now: 'avx512', 'avx2' or 'generic'.");
  m.def("isa_note", [] { return levit::isa_note(); }, "Why the active path was chosen.");
  m.def("available_isas", &levit::available_isas, "Paths this CPU supports, best first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Switch the kernel path at run time (ValueError if the CPU lacks it).");
  m.attr("PANEL") = levit::kPanel;

  m.def("attention", &attention, release(), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("bias"), py::arg("out"), py::arg("batch"), py::arg("heads"), py::arg("nq"),
        py::arg("nk"), py::arg("dk"), py::arg("dv"), py::arg("q_sb"), py::arg("q_sh"),
        py::arg("q_sn"), py::arg("k_sb"), py::arg("k_sh"), py::arg("k_sn"), py::arg("v_sb"),
        py::arg("v_sh"), py::arg("v_sn"), py::arg("scale"), py::arg("hardswish"),
        py::arg("probs"), py::arg("nthreads"));

  m.def("packed_numel", &levit::packed_numel, py::arg("n"), py::arg("k"));
  m.def(
      "pack_weight",
      [](std::uintptr_t w, int64_t n, int64_t k, int64_t ldw, std::uintptr_t packed, int nthreads) {
        levit::pack_weight(ptr<const float>(w), n, k, ldw, ptr<float>(packed), nthreads);
      },
      release(), py::arg("w"), py::arg("n"), py::arg("k"), py::arg("ldw"), py::arg("packed"),
      py::arg("nthreads"));
  m.def(
      "gemm_packed",
      [](std::uintptr_t x, int64_t m, int64_t k, int64_t ldx, std::uintptr_t packed, int64_t n,
         std::uintptr_t bias, std::uintptr_t residual, int64_t ldr, int act, std::uintptr_t out,
         int64_t ldo, int nthreads) {
        levit::gemm_packed(ptr<const float>(x), m, k, ldx, ptr<const float>(packed), n,
                           ptr<const float>(bias), ptr<const float>(residual), ldr, act,
                           ptr<float>(out), ldo, nthreads);
      },
      release(), py::arg("x"), py::arg("m"), py::arg("k"), py::arg("ldx"), py::arg("packed"),
      py::arg("n"), py::arg("bias"), py::arg("residual"), py::arg("ldr"), py::arg("act"),
      py::arg("out"), py::arg("ldo"), py::arg("nthreads"));
  m.def(
      "conv2d_packed",
      [](std::uintptr_t x, int64_t batch, int64_t h, int64_t w, int64_t cin, int64_t sb,
         int64_t sh, int64_t sw, int64_t sc, int64_t kh, int64_t kw, int64_t stride, int64_t pad,
         std::uintptr_t packed, int64_t cout, std::uintptr_t bias, int act, std::uintptr_t out,
         int nthreads) {
        levit::ConvArgs a{ptr<const float>(x), batch, h, w, cin, sb, sh, sw, sc, kh, kw, stride,
                          pad, ptr<const float>(packed), cout, ptr<const float>(bias), act,
                          ptr<float>(out)};
        levit::conv2d_packed(a, nthreads);
      },
      release(), py::arg("x"), py::arg("batch"), py::arg("h"), py::arg("w"), py::arg("cin"),
      py::arg("sb"), py::arg("sh"), py::arg("sw"), py::arg("sc"), py::arg("kh"), py::arg("kw"),
      py::arg("stride"), py::arg("pad"), py::arg("packed"), py::arg("cout"), py::arg("bias"),
      py::arg("act"), py::arg("out"), py::arg("nthreads"));
  m.def(
      "mlp_packed",
      [](std::uintptr_t x, int64_t m, int64_t c, int64_t ldx, std::uintptr_t w1p,
         std::uintptr_t b1, int64_t ch, std::uintptr_t w2p, std::uintptr_t b2, std::uintptr_t out,
         int nthreads) {
        levit::mlp_packed(ptr<const float>(x), m, c, ldx, ptr<const float>(w1p),
                          ptr<const float>(b1), ch, ptr<const float>(w2p), ptr<const float>(b2),
                          ptr<float>(out), nthreads);
      },
      release(), py::arg("x"), py::arg("m"), py::arg("c"), py::arg("ldx"), py::arg("w1p"),
      py::arg("b1"), py::arg("ch"), py::arg("w2p"), py::arg("b2"), py::arg("out"),
      py::arg("nthreads"));

  // A whole fused forward in one call (forward.h). Layers are added as keyword arguments;
  // the weights' addresses must stay valid for the Program's life (FusedPlan keeps them).
  py::class_<levit::Program>(m, "Program")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("in_channels"), py::arg("height"),
           py::arg("width"))
      .def(
          "add_conv",
          [](levit::Program& p, std::uintptr_t packed, std::uintptr_t bias, int64_t cin,
             int64_t cout, int64_t kernel, int64_t stride, int64_t pad, int act) {
            p.add_conv({ptr<const float>(packed), ptr<const float>(bias), cin, cout, kernel,
                        stride, pad, act});
          },
          py::arg("packed"), py::arg("bias"), py::arg("cin"), py::arg("cout"), py::arg("kernel"),
          py::arg("stride"), py::arg("pad"), py::arg("act"))
      .def(
          "add_attention",
          [](levit::Program& p, int64_t channels, int64_t out_channels, int64_t heads, int64_t dk,
             int64_t dv, int64_t subsample, float scale, std::uintptr_t bias,
             std::uintptr_t qkv_packed, std::uintptr_t qkv_bias, std::uintptr_t q_packed,
             std::uintptr_t q_bias, std::uintptr_t proj_packed, std::uintptr_t proj_bias) {
            p.add_attention({channels, out_channels, heads, dk, dv, subsample, scale,
                             ptr<const float>(bias), ptr<const float>(qkv_packed),
                             ptr<const float>(qkv_bias), ptr<const float>(q_packed),
                             ptr<const float>(q_bias), ptr<const float>(proj_packed),
                             ptr<const float>(proj_bias)});
          },
          py::arg("channels"), py::arg("out_channels"), py::arg("heads"), py::arg("dk"),
          py::arg("dv"), py::arg("subsample"), py::arg("scale"), py::arg("bias"),
          py::arg("qkv_packed"), py::arg("qkv_bias"), py::arg("q_packed"), py::arg("q_bias"),
          py::arg("proj_packed"), py::arg("proj_bias"))
      .def(
          "add_mlp",
          [](levit::Program& p, int64_t channels, int64_t hidden, std::uintptr_t w1_packed,
             std::uintptr_t b1, std::uintptr_t w2_packed, std::uintptr_t b2) {
            p.add_mlp({channels, hidden, ptr<const float>(w1_packed), ptr<const float>(b1),
                       ptr<const float>(w2_packed), ptr<const float>(b2)});
          },
          py::arg("channels"), py::arg("hidden"), py::arg("w1_packed"), py::arg("b1"),
          py::arg("w2_packed"), py::arg("b2"))
      .def(
          "set_head",
          [](levit::Program& p, std::uintptr_t packed, std::uintptr_t bias, int64_t classes) {
            p.set_head(ptr<const float>(packed), ptr<const float>(bias), classes);
          },
          py::arg("packed"), py::arg("bias"), py::arg("classes"))
      .def_property_readonly("rows", &levit::Program::rows)
      .def_property_readonly("cols", &levit::Program::cols)
      .def_property_readonly("channels", &levit::Program::channels)
      .def_property_readonly("output_features", &levit::Program::output_features)
      .def("workspace_floats", &levit::Program::workspace_floats, py::arg("batch"))
      .def(
          "run",
          [](const levit::Program& p, std::uintptr_t images, int64_t batch, int64_t sb,
             int64_t sc, int64_t sh, int64_t sw, std::uintptr_t workspace, std::uintptr_t out,
             int nthreads) {
            p.run(ptr<const float>(images), batch, sb, sc, sh, sw, ptr<float>(workspace),
                  ptr<float>(out), nthreads);
          },
          release(), py::arg("images"), py::arg("batch"), py::arg("sb"), py::arg("sc"),
          py::arg("sh"), py::arg("sw"), py::arg("workspace"), py::arg("out"),
          py::arg("nthreads"));
}
