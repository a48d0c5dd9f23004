// oneDNN convolutions as XLA FFI handlers for cnnjax's CPU fast path (see onednn.py).
//
// Three handlers, each `(a, b) -> out` on float32 buffers with attributes strides, pad_lo,
// pad_hi, dilation (2 values each) and groups:
//   cnnjax_conv_fwd:          (x, w)  -> y     y  = conv(x, w)
//   cnnjax_conv_bwd_data:     (dy, w) -> dx    dx = conv's VJP with respect to x
//   cnnjax_conv_bwd_weights:  (x, dy) -> dw    dw = conv's VJP with respect to w
// JAX layouts: x (N, H, W, C) and y (N, OH, OW, O) channels-last; w (KH, KW, C/G, O) with the
// output channels group-major, which is oneDNN's `hwigo` order for G > 1 and `hwio` for G = 1.
// Activations stay in the caller's layout (reordering them costs more than it saves); weights
// are reordered to whatever layout oneDNN's fastest kernel wants (`format_tag::any`): with
// fixed HWIO weights the backward passes fall back to slower im2col kernels.
//
// Primitives are created once per shape and cached. Executions are serialized: XLA may run
// independent ops concurrently, and two OpenMP teams of all cores each would oversubscribe the
// machine. Scratch memory is the user's (per thread), as oneDNN requires for primitives shared
// between threads when it is built without concurrent scratchpads.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Primitive {
  dnnl::primitive op;
  memory::desc x_md, y_md, user_w_md, op_w_md;
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;  // user -> op layout (forward, backward data), op -> user (weights)
  size_t scratch_bytes = 0;
  std::string implementation;
};

std::mutex cache_mutex;
std::mutex execute_mutex;
std::unordered_map<std::string, std::shared_ptr<Primitive>> cache;

memory::dims Dims(ffi::Span<const int64_t> span) { return memory::dims(span.begin(), span.end()); }

std::string Key(int kind, int64_t groups, std::initializer_list<const memory::dims*> all) {
  std::string key = std::to_string(kind) + ":" + std::to_string(groups);
  for (const memory::dims* dims : all) {
    key += "|";
    for (auto d : *dims) key += std::to_string(d) + ",";
  }
  return key;
}

std::shared_ptr<Primitive> GetPrimitive(int kind, const memory::dims& x, const memory::dims& w,
                                        const memory::dims& y, const memory::dims& strides,
                                        const memory::dims& dilation, const memory::dims& pad_lo,
                                        const memory::dims& pad_hi, int64_t groups) {
  const std::string key = Key(kind, groups, {&x, &w, &y, &strides, &dilation, &pad_lo, &pad_hi});
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto found = cache.find(key);
    if (found != cache.end()) return found->second;
  }
  auto p = std::make_shared<Primitive>();
  // oneDNN's logical order is NCHW / OIHW / GOIHW; the tags give the memory order.
  const memory::dims x_dims = {x[0], x[3], x[1], x[2]}, y_dims = {y[0], y[3], y[1], y[2]};
  memory::dims w_dims;
  Tag w_tag;
  if (groups == 1) {
    w_dims = {w[3], w[2], w[0], w[1]};
    w_tag = Tag::hwio;
  } else {
    w_dims = {groups, w[3] / groups, w[2], w[0], w[1]};
    w_tag = Tag::hwigo;
  }
  memory::dims dilation_minus_one = dilation;  // oneDNN counts dilation from 0
  for (auto& d : dilation_minus_one) d -= 1;
  const auto f32 = memory::data_type::f32;
  p->x_md = memory::desc(x_dims, f32, Tag::nhwc);
  p->y_md = memory::desc(y_dims, f32, Tag::nhwc);
  p->user_w_md = memory::desc(w_dims, f32, w_tag);
  const memory::desc any_w(w_dims, f32, Tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto direct = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc forward(
      Engine(), dnnl::prop_kind::forward_training, direct, p->x_md, any_w, p->y_md, strides,
      dilation_minus_one, pad_lo, pad_hi, attr);
  if (kind == kForward) {
    p->op_w_md = forward.weights_desc();
    p->op = dnnl::convolution_forward(forward);
    p->scratch_bytes = forward.scratchpad_desc().get_size();
    p->implementation = forward.impl_info_str();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), direct, p->x_md, any_w, p->y_md,
                                                       strides, dilation_minus_one, pad_lo,
                                                       pad_hi, forward, attr);
    p->op_w_md = pd.weights_desc();
    p->op = dnnl::convolution_backward_data(pd);
    p->scratch_bytes = pd.scratchpad_desc().get_size();
    p->implementation = pd.impl_info_str();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(Engine(), direct, p->x_md, any_w,
                                                          p->y_md, strides, dilation_minus_one,
                                                          pad_lo, pad_hi, forward, attr);
    p->op_w_md = pd.diff_weights_desc();
    p->op = dnnl::convolution_backward_weights(pd);
    p->scratch_bytes = pd.scratchpad_desc().get_size();
    p->implementation = pd.impl_info_str();
  }
  p->reorder_weights = !(p->op_w_md == p->user_w_md);
  if (p->reorder_weights) {
    const bool to_user = kind == kBackwardWeights;
    const memory::desc& from = to_user ? p->op_w_md : p->user_w_md;
    const memory::desc& to = to_user ? p->user_w_md : p->op_w_md;
    p->weights_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  }
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.emplace(key, p).first->second;
}

void* ThreadBuffer(int which, size_t bytes) {
  thread_local std::vector<char> buffers[2];
  auto& buffer = buffers[which];
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  return buffer.data();
}

ffi::Error Run(int kind, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
               ffi::Span<const int64_t> dilation, int64_t groups) {
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 || out->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("cnnjax oneDNN conv: expects 4-D NHWC / HWIO buffers");
  try {
    memory::dims x, w, y;
    float *x_ptr, *w_ptr, *y_ptr;
    const memory::dims a_dims = Dims(a.dimensions()), b_dims = Dims(b.dimensions()),
                       out_dims = Dims(out->dimensions());
    if (kind == kForward) {
      x = a_dims, w = b_dims, y = out_dims;
      x_ptr = a.typed_data(), w_ptr = b.typed_data(), y_ptr = out->typed_data();
    } else if (kind == kBackwardData) {
      y = a_dims, w = b_dims, x = out_dims;
      y_ptr = a.typed_data(), w_ptr = b.typed_data(), x_ptr = out->typed_data();
    } else {
      x = a_dims, y = b_dims, w = out_dims;
      x_ptr = a.typed_data(), y_ptr = b.typed_data(), w_ptr = out->typed_data();
    }
    auto p = GetPrimitive(kind, x, w, y, Dims(strides), Dims(dilation), Dims(pad_lo),
                          Dims(pad_hi), groups);
    std::lock_guard<std::mutex> lock(execute_mutex);
    thread_local dnnl::stream stream(Engine());
    memory x_mem(p->x_md, Engine(), x_ptr), y_mem(p->y_md, Engine(), y_ptr);
    memory user_w(p->user_w_md, Engine(), w_ptr), op_w = user_w;
    if (p->reorder_weights) {
      op_w = memory(p->op_w_md, Engine(), ThreadBuffer(0, p->op_w_md.get_size()));
      if (kind != kBackwardWeights) p->weights_reorder.execute(stream, user_w, op_w);
    }
    memory scratch(memory::desc({static_cast<memory::dim>(p->scratch_bytes)},
                                memory::data_type::u8, Tag::x),
                   Engine(), ThreadBuffer(1, p->scratch_bytes));
    if (kind == kForward) {
      p->op.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, op_w},
                             {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kBackwardData) {
      p->op.execute(stream, {{DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_WEIGHTS, op_w},
                             {DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      p->op.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, y_mem},
                             {DNNL_ARG_DIFF_WEIGHTS, op_w}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (p->reorder_weights) p->weights_reorder.execute(stream, op_w, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& error) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + error.what());
  }
  return ffi::Error::Success();
}

}  // namespace

#define CNNJAX_CONV_BINDING                                                          \
  ffi::Ffi::Bind()                                                                   \
      .Arg<ffi::Buffer<ffi::F32>>()                                                  \
      .Arg<ffi::Buffer<ffi::F32>>()                                                  \
      .Ret<ffi::Buffer<ffi::F32>>()                                                  \
      .Attr<ffi::Span<const int64_t>>("strides")                                     \
      .Attr<ffi::Span<const int64_t>>("pad_lo")                                      \
      .Attr<ffi::Span<const int64_t>>("pad_hi")                                      \
      .Attr<ffi::Span<const int64_t>>("dilation")                                    \
      .Attr<int64_t>("groups")

#define CNNJAX_CONV_HANDLER(name, kind)                                                    \
  static ffi::Error name##Impl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,           \
                               ffi::ResultBuffer<ffi::F32> out,                            \
                               ffi::Span<const int64_t> strides,                           \
                               ffi::Span<const int64_t> pad_lo,                            \
                               ffi::Span<const int64_t> pad_hi,                            \
                               ffi::Span<const int64_t> dilation, int64_t groups) {        \
    return Run(kind, a, b, out, strides, pad_lo, pad_hi, dilation, groups);                \
  }                                                                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, name##Impl, CNNJAX_CONV_BINDING);

CNNJAX_CONV_HANDLER(cnnjax_conv_fwd, kForward)
CNNJAX_CONV_HANDLER(cnnjax_conv_bwd_data, kBackwardData)
CNNJAX_CONV_HANDLER(cnnjax_conv_bwd_weights, kBackwardWeights)

// oneDNN version as major * 10000 + minor * 100 + patch.
extern "C" int cnnjax_onednn_version() {
  const dnnl_version_t* v = dnnl::version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// The kernels oneDNN chose so far, one "key -> implementation" line each (for benchmarks).
extern "C" const char* cnnjax_onednn_implementations() {
  static std::string text;
  std::lock_guard<std::mutex> lock(cache_mutex);
  text.clear();
  for (const auto& [key, p] : cache)
    text += key + " -> " + p->implementation + (p->reorder_weights ? " (weights reordered)" : "") +
            "\n";
  return text.c_str();
}
