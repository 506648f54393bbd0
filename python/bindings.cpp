// bindings.cpp — pybind11 layer for levit_kernels.ops._C. Nothing but argument plumbing.
//
// Every kernel takes raw addresses (Python ints from tensor.data_ptr()), sizes, strides in
// elements and a thread count, and runs with the GIL released. Every argument is keyword-only
// and strides travel as tuples named after their layout (`q_strides` = batch, head, token;
// `nhwc_strides`, `nchw_strides`), so a swapped size or stride cannot pass unnoticed. The
// element type is the `dtype` argument ("float32" or "bfloat16", torch's names), which picks
// the float or the bf16 instantiation of a kernel (Program and ProgramBf16 are two classes).
// All validation of shapes, dtypes, devices and strides happens in levit_kernels/ops/cpu.py
// before an address gets here: this layer trusts its arguments.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "attention.h"
#include "cpu_features.h"
#include "forward.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "thread_pool.h"

namespace py = pybind11;
using Strides3 = std::array<int64_t, 3>;
using Strides4 = std::array<int64_t, 4>;
using levit::bf16;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Calls f(T{}) with T = float or bf16 as `dtype` names it.
template <class F>
void by_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") f(float{});
  else if (dtype == "bfloat16") f(bf16{});
  else throw py::value_error("dtype must be 'float32' or 'bfloat16', got '" + dtype + "'");
}

void set_isa(const std::string& name) {
  levit::Isa isa;
  if (!levit::isa_from_name(name, &isa))
    throw py::value_error(
        "isa must be one of 'generic', 'avx2', 'avx512', 'avx512_bf16', 'amx_bf16', got '" + name +
        "'");
  if (!levit::set_isa(isa))
    throw py::value_error("this CPU does not support the '" + name + "' path");
}

void attention(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t bias,
               std::uintptr_t out, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
               int64_t dk, int64_t dv, Strides3 q_strides, Strides3 k_strides,
               Strides3 v_strides, float scale, bool hardswish, bool probs, int nthreads,
               const std::string& dtype) {
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    levit::AttnArgsT<T> a{};
    a.q = ptr<const T>(q), a.k = ptr<const T>(k), a.v = ptr<const T>(v);
    a.bias = ptr<const T>(bias), a.out = ptr<T>(out);
    a.batch = batch, a.heads = heads, a.nq = nq, a.nk = nk, a.dk = dk, a.dv = dv;
    a.q_sb = q_strides[0], a.q_sh = q_strides[1], a.q_sn = q_strides[2];
    a.k_sb = k_strides[0], a.k_sh = k_strides[1], a.k_sn = k_strides[2];
    a.v_sb = v_strides[0], a.v_sh = v_strides[1], a.v_sn = v_strides[2];
    a.scale = scale, a.hardswish = hardswish, a.probs = probs;
    levit::attention(a, nthreads);
  });
}

void conv2d_packed(std::uintptr_t x, int64_t batch, int64_t height, int64_t width,
                   int64_t channels, Strides4 nhwc_strides, int64_t kernel_h, int64_t kernel_w,
                   int64_t stride, int64_t pad, std::uintptr_t packed, int64_t cout,
                   std::uintptr_t bias, int act, std::uintptr_t out, int nthreads,
                   const std::string& dtype) {
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    levit::ConvArgsT<T> a{};
    a.x = ptr<const T>(x), a.batch = batch, a.h = height, a.w = width, a.cin = channels;
    a.sb = nhwc_strides[0], a.sh = nhwc_strides[1], a.sw = nhwc_strides[2];
    a.sc = nhwc_strides[3];
    a.kh = kernel_h, a.kw = kernel_w, a.stride = stride, a.pad = pad;
    a.packed = ptr<const T>(packed), a.cout = cout, a.bias = ptr<const T>(bias);
    a.act = act, a.out = ptr<T>(out);
    levit::conv2d_packed(a, nthreads);
  });
}

// K in `segments` equal runs: a count that does not divide K would drop columns from the
// bf16 layout (and 0 divides by zero).
void check_segments(int64_t k, int64_t segments) {
  if (segments < 1 || k % segments != 0)
    throw py::value_error("segments: expected a divisor of k = " + std::to_string(k) + ", got " +
                          std::to_string(segments));
}

// The packed weight's shape (gemm.h, gemm_bf16.h): the one source of the layout's sizes.
// With segments > 1 (a conv's kernel rows) the K rows are shown as (segments, rows per
// segment): the same memory, but a weight packed for a 3x5 kernel then differs in shape
// from one for 5x3 or 1x15, which the flat K (the same 15·Cin) cannot tell apart.
py::tuple packed_shape(int64_t n, int64_t k, const std::string& dtype, int64_t segments) {
  check_segments(k, segments);
  const int64_t panels = (n + levit::kPanel - 1) / levit::kPanel;
  int64_t rows;
  py::tuple row;  // one K row (float32) or pair row (bf16) of a panel
  if (dtype == "float32") {
    rows = k, row = py::make_tuple(levit::kPanel);
  } else if (dtype == "bfloat16") {
    rows = levit::packed_pairs(k, segments), row = py::make_tuple(levit::kPanel, 2);
  } else {
    throw py::value_error("dtype must be 'float32' or 'bfloat16'");
  }
  if (segments == 1) return py::make_tuple(panels, rows) + row;
  return py::make_tuple(panels, segments, rows / segments) + row;
}

void pack_weight(std::uintptr_t w, int64_t n, int64_t k, int64_t ldw, std::uintptr_t packed,
                 int nthreads, const std::string& dtype, int64_t segments) {
  check_segments(k, segments);
  if (dtype == "float32")  // the float32 layout has no runs: segments change nothing
    levit::pack_weight(ptr<const float>(w), n, k, ldw, ptr<float>(packed), nthreads);
  else
    by_dtype(dtype, [&](auto) {
      levit::pack_weight(ptr<const bf16>(w), n, k, ldw, segments, ptr<bf16>(packed), nthreads);
    });
}

// Addresses of an attention layer for Program(Bf16).add_attention, of either element type.
struct AttentionAddresses {
  int64_t channels, out_channels, heads, dk, dv, subsample, head_width, q_offset, k_offset,
      v_offset;
  float scale;
  std::uintptr_t bias, qkv_packed, qkv_bias, q_packed, q_bias, proj_packed, proj_bias;

  template <class T>
  levit::AttentionLayerT<T> layer() const {
    return {channels, out_channels, heads, dk, dv, subsample, head_width, q_offset, k_offset,
            v_offset, scale, ptr<const T>(bias), ptr<const T>(qkv_packed),
            ptr<const T>(qkv_bias), ptr<const T>(q_packed), ptr<const T>(q_bias),
            ptr<const T>(proj_packed), ptr<const T>(proj_bias)};
  }
};

// A whole fused forward in one call (forward.h). The weights' addresses must stay valid for
// the Program's life (levit_kernels.cpu.ForwardProgram keeps the tensors).
template <class T>
void bind_program(py::module_& m, const char* name, const char* doc) {
  using P = levit::ProgramT<T>;
  const auto kw = py::kw_only();
  py::class_<P>(m, name, doc)
      .def(py::init<int64_t, int64_t, int64_t>(), kw, py::arg("in_channels"), py::arg("height"),
           py::arg("width"))
      .def(
          "add_conv",
          [](P& p, std::uintptr_t packed, std::uintptr_t bias, int64_t cin, int64_t cout,
             int64_t kernel, int64_t stride, int64_t pad, int act) {
            p.add_conv({ptr<const T>(packed), ptr<const T>(bias), cin, cout, kernel, stride, pad,
                        act});
          },
          kw, py::arg("packed"), py::arg("bias"), py::arg("cin"), py::arg("cout"),
          py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("act"))
      .def(
          "add_attention",
          [](P& p, const AttentionAddresses& layer) { p.add_attention(layer.layer<T>()); },
          py::arg("layer"))
      .def(
          "add_mlp",
          [](P& p, int64_t channels, int64_t hidden, std::uintptr_t w1_packed, std::uintptr_t b1,
             std::uintptr_t w2_packed, std::uintptr_t b2) {
            p.add_mlp({channels, hidden, ptr<const T>(w1_packed), ptr<const T>(b1),
                       ptr<const T>(w2_packed), ptr<const T>(b2)});
          },
          kw, py::arg("channels"), py::arg("hidden"), py::arg("w1_packed"), py::arg("b1"),
          py::arg("w2_packed"), py::arg("b2"))
      .def(
          "set_head",
          [](P& p, std::uintptr_t packed, std::uintptr_t bias, int64_t in_features,
             int64_t classes) {
            p.set_head(ptr<const T>(packed), ptr<const T>(bias), in_features, classes);
          },
          kw, py::arg("packed"), py::arg("bias"), py::arg("in_features"), py::arg("classes"))
      .def_property_readonly("rows", &P::rows)
      .def_property_readonly("cols", &P::cols)
      .def_property_readonly("channels", &P::channels)
      .def_property_readonly("output_features", &P::output_features)
      .def("workspace_elements", &P::workspace_elements, kw, py::arg("batch"))
      .def(
          "run",
          [](const P& p, std::uintptr_t images, int64_t batch, Strides4 nchw_strides,
             std::uintptr_t workspace, std::uintptr_t out, int nthreads) {
            p.run(ptr<const T>(images), batch, nchw_strides[0], nchw_strides[1],
                  nchw_strides[2], nchw_strides[3], ptr<T>(workspace), ptr<T>(out), nthreads);
          },
          py::call_guard<py::gil_scoped_release>(), kw, py::arg("images"), py::arg("batch"),
          py::arg("nchw_strides"), py::arg("workspace"), py::arg("out"), py::arg("nthreads"),
          "Images (batch, C, H, W) given by nchw_strides (batch, channel, row, column).")
      .def(
          "run_profiled",
          [](const P& p, std::uintptr_t images, int64_t batch, Strides4 nchw_strides,
             std::uintptr_t workspace, std::uintptr_t out, int nthreads) {
            std::vector<levit::StepTime> steps;
            {
              py::gil_scoped_release release;
              p.run(ptr<const T>(images), batch, nchw_strides[0], nchw_strides[1],
                    nchw_strides[2], nchw_strides[3], ptr<T>(workspace), ptr<T>(out), nthreads,
                    &steps);
            }
            py::list timed;
            for (const auto& step : steps)
              timed.append(py::make_tuple(step.name, step.kind, step.flops, step.seconds));
            return timed;
          },
          kw, py::arg("images"), py::arg("batch"), py::arg("nchw_strides"), py::arg("workspace"),
          py::arg("out"), py::arg("nthreads"),
          "run(), each step timed: [(name, kind, flops, seconds)] in forward order (forward.h).");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "levit_kernels CPU kernels (raw-pointer interface; use levit_kernels.cpu)";
  using release = py::call_guard<py::gil_scoped_release>;
  const auto kw = py::kw_only();

  m.def("isa", [] { return std::string(levit::isa_name(levit::active_isa())); },
        "The instruction-set path the kernels use now: 'amx_bf16', 'avx512_bf16', 'avx512', "
        "'avx2' or 'generic'.");
  m.def("isa_note", [] { return levit::isa_note(); }, "Why the active path was chosen.");
  m.def("isa_warning", [] { return levit::isa_warning(); },
        "Why LEVIT_CPU_ISA was not honoured ('' when it was, or is unset).");
  m.def("float32_path", [] { return std::string(levit::float32_path()); },
        "What the float32 kernels run on the active path.");
  m.def("bf16_path", [] { return std::string(levit::bf16_path()); },
        "What the bf16 kernels run on the active path.");
  m.def("available_isas", &levit::available_isas, "Paths this CPU supports, best first.");
  m.def("isa_emulation", [] { return std::string(levit::isa_emulation()); },
        "'' in a real build; what is emulated in a test build (LEVIT_EMULATE_AVX512).");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Switch the kernel path at run time (ValueError if the CPU lacks it).");
  m.def("thread_pool_workers", &levit::thread_pool_workers,
        "Worker threads the kernels' pool has started in this process.");
  m.def(
      "set_team_runner",
      [](std::uintptr_t address) {
        levit::set_team_runner(reinterpret_cast<levit::TeamRunner>(address));
      },
      py::arg("address"),
      "Run this thread's parallel loops on the OpenMP runtime whose GOMP_parallel is at "
      "`address` (0: on the pool's own workers); other threads' stay on the pool.");
  m.def("team_runner_active", &levit::team_runner_active,
        "Whether an external (OpenMP) team is set: it runs the loops of the thread that set it.");
  // Facts the Python side reads from here rather than writing them again.
  m.attr("PANEL") = levit::kPanel;
  py::dict acts;
  acts["none"] = static_cast<int>(levit::kActNone);
  acts["hardswish"] = static_cast<int>(levit::kActHardswish);
  m.attr("ACTIVATIONS") = acts;
  m.attr("DTYPES") = py::make_tuple("float32", "bfloat16");

  m.def("attention", &attention, release(), kw, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("bias"), py::arg("out"), py::arg("batch"), py::arg("heads"), py::arg("nq"),
        py::arg("nk"), py::arg("dk"), py::arg("dv"), py::arg("q_strides"), py::arg("k_strides"),
        py::arg("v_strides"), py::arg("scale"), py::arg("hardswish"), py::arg("probs"),
        py::arg("nthreads"), py::arg("dtype") = "float32",
        "Fused attention (attention.h); strides are (batch, head, token) in elements.");

  m.def("packed_numel", &levit::packed_numel, kw, py::arg("n"), py::arg("k"));
  m.def("packed_shape", &packed_shape, kw, py::arg("n"), py::arg("k"),
        py::arg("dtype") = "float32", py::arg("segments") = 1,
        "Shape of an (n, k) weight packed by pack_weight: (panels, k, PANEL) in float32, "
        "(panels, k pairs, PANEL, 2) in bfloat16 (gemm_bf16.h); with segments > 1 the k "
        "(pair) rows as (segments, rows per segment).");
  m.def(
      "run_padding_matches",
      [](std::uintptr_t packed, int64_t k, int64_t segments) {
        check_segments(k, segments);
        return levit::run_padding_matches(ptr<const bf16>(packed), k, segments);
      },
      kw, py::arg("packed"), py::arg("k"), py::arg("segments") = 1,
      "Whether a bf16 packed weight was packed for K = k in `segments` runs, not for K one "
      "off per run (the same shape; gemm_bf16.h kRunPadBits).");
  m.def(
      "packed_out_features",
      [](std::uintptr_t packed, int64_t panels, int64_t panel_numel, const std::string& dtype) {
        if (panels < 1 || panel_numel < levit::kPanel)
          throw py::value_error("packed_out_features: expected panels >= 1 and panel_numel >= " +
                                std::to_string(levit::kPanel));
        int64_t n = 0;
        by_dtype(dtype, [&](auto tag) {
          n = levit::packed_out_features(ptr<const decltype(tag)>(packed), panels, panel_numel);
        });
        return n;
      },
      kw, py::arg("packed"), py::arg("panels"), py::arg("panel_numel"),
      py::arg("dtype") = "float32",
      "The N a weight was packed for, read from the marks of its padding columns (N and N' "
      "with as many panels give the same shape; gemm.h kColumnPadMark).");
  m.def("pack_weight", &pack_weight, release(), kw, py::arg("w"), py::arg("n"), py::arg("k"),
        py::arg("ldw"), py::arg("packed"), py::arg("nthreads"), py::arg("dtype") = "float32",
        py::arg("segments") = 1);
  m.def(
      "gemm_packed",
      [](std::uintptr_t x, int64_t m, int64_t k, int64_t ldx, std::uintptr_t packed, int64_t n,
         std::uintptr_t bias, std::uintptr_t residual, int64_t ldr, int act, std::uintptr_t out,
         int64_t ldo, int nthreads, const std::string& dtype) {
        by_dtype(dtype, [&](auto tag) {
          using T = decltype(tag);
          levit::gemm_packed(ptr<const T>(x), m, k, ldx, ptr<const T>(packed), n,
                             ptr<const T>(bias), ptr<const T>(residual), ldr, act, ptr<T>(out),
                             ldo, nthreads);
        });
      },
      release(), kw, py::arg("x"), py::arg("m"), py::arg("k"), py::arg("ldx"), py::arg("packed"),
      py::arg("n"), py::arg("bias"), py::arg("residual"), py::arg("ldr"), py::arg("act"),
      py::arg("out"), py::arg("ldo"), py::arg("nthreads"), py::arg("dtype") = "float32");
  m.def("conv2d_packed", &conv2d_packed, release(), kw, py::arg("x"), py::arg("batch"),
        py::arg("height"), py::arg("width"), py::arg("channels"), py::arg("nhwc_strides"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride"), py::arg("pad"),
        py::arg("packed"), py::arg("cout"), py::arg("bias"), py::arg("act"), py::arg("out"),
        py::arg("nthreads"), py::arg("dtype") = "float32",
        "NHWC convolution (gemm.h); nhwc_strides are (batch, row, column, channel).");
  m.def(
      "mlp_packed",
      [](std::uintptr_t x, int64_t m, int64_t c, int64_t ldx, std::uintptr_t w1p,
         std::uintptr_t b1, int64_t ch, std::uintptr_t w2p, std::uintptr_t b2, std::uintptr_t out,
         int nthreads, const std::string& dtype) {
        by_dtype(dtype, [&](auto tag) {
          using T = decltype(tag);
          levit::mlp_packed(ptr<const T>(x), m, c, ldx, ptr<const T>(w1p), ptr<const T>(b1), ch,
                            ptr<const T>(w2p), ptr<const T>(b2), ptr<T>(out), nthreads);
        });
      },
      release(), kw, py::arg("x"), py::arg("m"), py::arg("c"), py::arg("ldx"), py::arg("w1p"),
      py::arg("b1"), py::arg("ch"), py::arg("w2p"), py::arg("b2"), py::arg("out"),
      py::arg("nthreads"), py::arg("dtype") = "float32");

  bind_program<float>(m, "Program", "A whole fused forward in float32 (forward.h).");
  bind_program<bf16>(m, "ProgramBf16",
                     "A whole fused forward in bfloat16: bf16 activations, float32 "
                     "accumulation (forward.h).");

  // An attention layer for Program(Bf16).add_attention, built from keyword arguments only.
  py::class_<AttentionAddresses>(m, "AttentionLayer")
      .def(py::init([](int64_t channels, int64_t out_channels, int64_t heads, int64_t dk,
                       int64_t dv, int64_t subsample, int64_t head_width, int64_t q_offset,
                       int64_t k_offset, int64_t v_offset, float scale, std::uintptr_t bias,
                       std::uintptr_t qkv_packed, std::uintptr_t qkv_bias,
                       std::uintptr_t q_packed, std::uintptr_t q_bias,
                       std::uintptr_t proj_packed, std::uintptr_t proj_bias) {
             return AttentionAddresses{channels,  out_channels, heads,    dk,         dv,
                                       subsample, head_width,   q_offset, k_offset,   v_offset,
                                       scale,     bias,         qkv_packed, qkv_bias, q_packed,
                                       q_bias,    proj_packed,  proj_bias};
           }),
           kw, py::arg("channels"), py::arg("out_channels"), py::arg("heads"), py::arg("dk"),
           py::arg("dv"), py::arg("subsample"), py::arg("head_width"), py::arg("q_offset"),
           py::arg("k_offset"), py::arg("v_offset"), py::arg("scale"), py::arg("bias"),
           py::arg("qkv_packed"), py::arg("qkv_bias"), py::arg("q_packed"), py::arg("q_bias"),
           py::arg("proj_packed"), py::arg("proj_bias"));
}
