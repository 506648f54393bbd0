// bindings.cpp — pybind11 layer for levit_kernels.ops._C. Nothing but argument plumbing.
//
// Every kernel takes raw addresses (Python ints from tensor.data_ptr()), sizes, strides in
// elements and a thread count, and runs with the GIL released. Every argument is keyword-only
// and strides travel as tuples named after their layout (`q_strides` = batch, head, token;
// `nhwc_strides`, `nchw_strides`), so a swapped size or stride cannot pass unnoticed. All
// validation of shapes, dtypes, devices and strides happens in levit_kernels/ops/cpu.py before
// an address gets here: this layer trusts its arguments.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "attention.h"
#include "cpu_features.h"
#include "forward.h"
#include "gemm.h"
#include "thread_pool.h"

namespace py = pybind11;
using Strides3 = std::array<int64_t, 3>;
using Strides4 = std::array<int64_t, 4>;

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
               int64_t dk, int64_t dv, Strides3 q_strides, Strides3 k_strides,
               Strides3 v_strides, float scale, bool hardswish, bool probs, int nthreads) {
  levit::AttnArgs a{};
  a.q = ptr<const float>(q), a.k = ptr<const float>(k), a.v = ptr<const float>(v);
  a.bias = ptr<const float>(bias), a.out = ptr<float>(out);
  a.batch = batch, a.heads = heads, a.nq = nq, a.nk = nk, a.dk = dk, a.dv = dv;
  a.q_sb = q_strides[0], a.q_sh = q_strides[1], a.q_sn = q_strides[2];
  a.k_sb = k_strides[0], a.k_sh = k_strides[1], a.k_sn = k_strides[2];
  a.v_sb = v_strides[0], a.v_sh = v_strides[1], a.v_sn = v_strides[2];
  a.scale = scale, a.hardswish = hardswish, a.probs = probs;
  levit::attention(a, nthreads);
}

void conv2d_packed(std::uintptr_t x, int64_t batch, int64_t height, int64_t width,
                   int64_t channels, Strides4 nhwc_strides, int64_t kernel_h, int64_t kernel_w,
                   int64_t stride, int64_t pad, std::uintptr_t packed, int64_t cout,
                   std::uintptr_t bias, int act, std::uintptr_t out, int nthreads) {
  levit::ConvArgs a{};
  a.x = ptr<const float>(x), a.batch = batch, a.h = height, a.w = width, a.cin = channels;
  a.sb = nhwc_strides[0], a.sh = nhwc_strides[1], a.sw = nhwc_strides[2];
  a.sc = nhwc_strides[3];
  a.kh = kernel_h, a.kw = kernel_w, a.stride = stride, a.pad = pad;
  a.packed = ptr<const float>(packed), a.cout = cout, a.bias = ptr<const float>(bias);
  a.act = act, a.out = ptr<float>(out);
  levit::conv2d_packed(a, nthreads);
}

levit::AttentionLayer attention_layer(int64_t channels, int64_t out_channels, int64_t heads,
                                      int64_t dk, int64_t dv, int64_t subsample,
                                      int64_t head_width, int64_t q_offset, int64_t k_offset,
                                      int64_t v_offset, float scale, std::uintptr_t bias,
                                      std::uintptr_t qkv_packed, std::uintptr_t qkv_bias,
                                      std::uintptr_t q_packed, std::uintptr_t q_bias,
                                      std::uintptr_t proj_packed, std::uintptr_t proj_bias) {
  levit::AttentionLayer l{};
  l.channels = channels, l.out_channels = out_channels, l.heads = heads, l.dk = dk, l.dv = dv;
  l.subsample = subsample, l.head_width = head_width;
  l.q_offset = q_offset, l.k_offset = k_offset, l.v_offset = v_offset, l.scale = scale;
  l.bias = ptr<const float>(bias);
  l.qkv_packed = ptr<const float>(qkv_packed), l.qkv_bias = ptr<const float>(qkv_bias);
  l.q_packed = ptr<const float>(q_packed), l.q_bias = ptr<const float>(q_bias);
  l.proj_packed = ptr<const float>(proj_packed), l.proj_bias = ptr<const float>(proj_bias);
  return l;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "levit_kernels CPU kernels (raw-pointer interface; use levit_kernels.cpu)";
  using release = py::call_guard<py::gil_scoped_release>;
  const auto kw = py::kw_only();

  m.def("isa", [] { return std::string(levit::isa_name(levit::active_isa())); },
        "The instruction-set path the kernels use now: 'avx512', 'avx2' or 'generic'.");
  m.def("isa_note", [] { return levit::isa_note(); }, "Why the active path was chosen.");
  m.def("available_isas", &levit::available_isas, "Paths this CPU supports, best first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Switch the kernel path at run time (ValueError if the CPU lacks it).");
  m.def("thread_pool_workers", &levit::thread_pool_workers,
        "Worker threads the kernels' pool has started in this process.");
  // Facts the Python side reads from here rather than writing them again.
  m.attr("PANEL") = levit::kPanel;
  py::dict acts;
  acts["none"] = static_cast<int>(levit::kActNone);
  acts["hardswish"] = static_cast<int>(levit::kActHardswish);
  m.attr("ACTIVATIONS") = acts;

  m.def("attention", &attention, release(), kw, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("bias"), py::arg("out"), py::arg("batch"), py::arg("heads"), py::arg("nq"),
        py::arg("nk"), py::arg("dk"), py::arg("dv"), py::arg("q_strides"), py::arg("k_strides"),
        py::arg("v_strides"), py::arg("scale"), py::arg("hardswish"), py::arg("probs"),
        py::arg("nthreads"),
        "Fused attention (attention.h); strides are (batch, head, token) in elements.");

  m.def("packed_numel", &levit::packed_numel, kw, py::arg("n"), py::arg("k"));
  m.def(
      "pack_weight",
      [](std::uintptr_t w, int64_t n, int64_t k, int64_t ldw, std::uintptr_t packed, int nthreads) {
        levit::pack_weight(ptr<const float>(w), n, k, ldw, ptr<float>(packed), nthreads);
      },
      release(), kw, py::arg("w"), py::arg("n"), py::arg("k"), py::arg("ldw"), py::arg("packed"),
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
      release(), kw, py::arg("x"), py::arg("m"), py::arg("k"), py::arg("ldx"), py::arg("packed"),
      py::arg("n"), py::arg("bias"), py::arg("residual"), py::arg("ldr"), py::arg("act"),
      py::arg("out"), py::arg("ldo"), py::arg("nthreads"));
  m.def("conv2d_packed", &conv2d_packed, release(), kw, py::arg("x"), py::arg("batch"),
        py::arg("height"), py::arg("width"), py::arg("channels"), py::arg("nhwc_strides"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride"), py::arg("pad"),
        py::arg("packed"), py::arg("cout"), py::arg("bias"), py::arg("act"), py::arg("out"),
        py::arg("nthreads"),
        "NHWC convolution (gemm.h); nhwc_strides are (batch, row, column, channel).");
  m.def(
      "mlp_packed",
      [](std::uintptr_t x, int64_t m, int64_t c, int64_t ldx, std::uintptr_t w1p,
         std::uintptr_t b1, int64_t ch, std::uintptr_t w2p, std::uintptr_t b2, std::uintptr_t out,
         int nthreads) {
        levit::mlp_packed(ptr<const float>(x), m, c, ldx, ptr<const float>(w1p),
                          ptr<const float>(b1), ch, ptr<const float>(w2p), ptr<const float>(b2),
                          ptr<float>(out), nthreads);
      },
      release(), kw, py::arg("x"), py::arg("m"), py::arg("c"), py::arg("ldx"), py::arg("w1p"),
      py::arg("b1"), py::arg("ch"), py::arg("w2p"), py::arg("b2"), py::arg("out"),
      py::arg("nthreads"));

  // A whole fused forward in one call (forward.h). The weights' addresses must stay valid for
  // the Program's life (levit_kernels.cpu.ForwardProgram keeps the tensors).
  py::class_<levit::Program>(m, "Program")
      .def(py::init<int64_t, int64_t, int64_t>(), kw, py::arg("in_channels"), py::arg("height"),
           py::arg("width"))
      .def(
          "add_conv",
          [](levit::Program& p, std::uintptr_t packed, std::uintptr_t bias, int64_t cin,
             int64_t cout, int64_t kernel, int64_t stride, int64_t pad, int act) {
            p.add_conv({ptr<const float>(packed), ptr<const float>(bias), cin, cout, kernel,
                        stride, pad, act});
          },
          kw, py::arg("packed"), py::arg("bias"), py::arg("cin"), py::arg("cout"),
          py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("act"))
      .def(
          "add_attention",
          [](levit::Program& p, const levit::AttentionLayer& layer) { p.add_attention(layer); },
          py::arg("layer"))
      .def(
          "add_mlp",
          [](levit::Program& p, int64_t channels, int64_t hidden, std::uintptr_t w1_packed,
             std::uintptr_t b1, std::uintptr_t w2_packed, std::uintptr_t b2) {
            p.add_mlp({channels, hidden, ptr<const float>(w1_packed), ptr<const float>(b1),
                       ptr<const float>(w2_packed), ptr<const float>(b2)});
          },
          kw, py::arg("channels"), py::arg("hidden"), py::arg("w1_packed"), py::arg("b1"),
          py::arg("w2_packed"), py::arg("b2"))
      .def(
          "set_head",
          [](levit::Program& p, std::uintptr_t packed, std::uintptr_t bias, int64_t in_features,
             int64_t classes) {
            p.set_head(ptr<const float>(packed), ptr<const float>(bias), in_features, classes);
          },
          kw, py::arg("packed"), py::arg("bias"), py::arg("in_features"), py::arg("classes"))
      .def_property_readonly("rows", &levit::Program::rows)
      .def_property_readonly("cols", &levit::Program::cols)
      .def_property_readonly("channels", &levit::Program::channels)
      .def_property_readonly("output_features", &levit::Program::output_features)
      .def("workspace_floats", &levit::Program::workspace_floats, kw, py::arg("batch"))
      .def(
          "run",
          [](const levit::Program& p, std::uintptr_t images, int64_t batch,
             Strides4 nchw_strides, std::uintptr_t workspace, std::uintptr_t out, int nthreads) {
            p.run(ptr<const float>(images), batch, nchw_strides[0], nchw_strides[1],
                  nchw_strides[2], nchw_strides[3], ptr<float>(workspace), ptr<float>(out),
                  nthreads);
          },
          release(), kw, py::arg("images"), py::arg("batch"), py::arg("nchw_strides"),
          py::arg("workspace"), py::arg("out"), py::arg("nthreads"),
          "Images (batch, C, H, W) given by nchw_strides (batch, channel, row, column).");

  // An attention layer for Program.add_attention, built from keyword arguments only.
  py::class_<levit::AttentionLayer>(m, "AttentionLayer")
      .def(py::init(&attention_layer), kw, py::arg("channels"), py::arg("out_channels"),
           py::arg("heads"), py::arg("dk"), py::arg("dv"), py::arg("subsample"),
           py::arg("head_width"), py::arg("q_offset"), py::arg("k_offset"), py::arg("v_offset"),
           py::arg("scale"), py::arg("bias"), py::arg("qkv_packed"), py::arg("qkv_bias"),
           py::arg("q_packed"), py::arg("q_bias"), py::arg("proj_packed"),
           py::arg("proj_bias"));
}
