// oneDNN convolutions as XLA FFI handlers for cnnjax's CPU fast path (see onednn.py).
//
// Three handlers, each `(a, b) -> out` on float32 buffers with attributes strides, pad_lo,
// pad_hi, dilation (2 values each) and groups:
//   cnnjax_conv_fwd:          (x, w)  -> y     y  = conv(x, w)
//   cnnjax_conv_bwd_data:     (dy, w) -> dx    dx = conv's VJP with respect to x
//   cnnjax_conv_bwd_weights:  (x, dy) -> dw    dw = conv's VJP with respect to w
//   cnnjax_conv_fused:        (x, w, b[, r]) -> y  y = act(conv(x, w) + b [+ r]), inference only
// The fused handler runs the bias, the residual sum and a ReLU as oneDNN post-ops, so the
// activation is written once; its residual `r` arrives aliased to `y` (the sum post-op adds to
// the destination in place). Attribute `act` selects the activation: 0 none, 1 ReLU, 2 ReLU6.
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

#include <algorithm>
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

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2, kFused = 3 };

// Post-ops of the fused forward pass (bit flags, part of the primitive's cache key).
enum Fusion { kSum = 1, kRelu = 2, kRelu6 = 4 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Primitive {
  dnnl::primitive op;
  memory::desc x_md, y_md, user_w_md, op_w_md, bias_md;
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;  // user -> op layout (forward, backward data), op -> user (weights)
  size_t scratch_bytes = 0;
  std::string implementation;
};

std::mutex cache_mutex;
std::mutex execute_mutex;
std::unordered_map<std::string, std::shared_ptr<Primitive>> cache;

memory::dims Dims(ffi::Span<const int64_t> span) { return memory::dims(span.begin(), span.end()); }

std::string Key(int kind, int64_t groups, int fusion,
                std::initializer_list<const memory::dims*> all) {
  std::string key = std::to_string(kind) + ":" + std::to_string(groups) + ":" +
                    std::to_string(fusion);
  for (const memory::dims* dims : all) {
    key += "|";
    for (auto d : *dims) key += std::to_string(d) + ",";
  }
  return key;
}

std::shared_ptr<Primitive> GetPrimitive(int kind, const memory::dims& x, const memory::dims& w,
                                        const memory::dims& y, const memory::dims& strides,
                                        const memory::dims& dilation, const memory::dims& pad_lo,
                                        const memory::dims& pad_hi, int64_t groups,
                                        int fusion = 0) {
  const std::string key =
      Key(kind, groups, fusion, {&x, &w, &y, &strides, &dilation, &pad_lo, &pad_hi});
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
  if (kind == kFused) {
    p->bias_md = memory::desc({y[3]}, f32, Tag::x);
    dnnl::post_ops post_ops;
    if (fusion & kSum) post_ops.append_sum(1.0f);
    if (fusion & kRelu) post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    if (fusion & kRelu6) post_ops.append_eltwise(dnnl::algorithm::eltwise_clip, 0.0f, 6.0f);
    dnnl::primitive_attr fused_attr = attr;
    fused_attr.set_post_ops(post_ops);
    dnnl::convolution_forward::primitive_desc pd(
        Engine(), dnnl::prop_kind::forward_inference, direct, p->x_md, any_w, p->bias_md,
        p->y_md, strides, dilation_minus_one, pad_lo, pad_hi, fused_attr);
    p->op_w_md = pd.weights_desc();
    p->op = dnnl::convolution_forward(pd);
    p->scratch_bytes = pd.scratchpad_desc().get_size();
    p->implementation = pd.impl_info_str();
  } else if (kind == kForward) {
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

// y = act(conv(x, w) + b [+ r]) in one oneDNN pass; `r`, when present, is already in `y`'s
// buffer (aliased by XLA; copied here otherwise) and added by the sum post-op.
ffi::Error RunFused(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                    const float* residual, ffi::ResultBuffer<ffi::F32> out,
                    ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                    ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation,
                    int64_t groups, int64_t act) {
  if (act < 0 || act > 2)
    return ffi::Error::InvalidArgument("cnnjax oneDNN conv: act must be 0, 1 (ReLU) or 2 (ReLU6)");
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 || out->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("cnnjax oneDNN conv: expects 4-D NHWC / HWIO buffers");
  try {
    const int fusion =
        (residual != nullptr ? kSum : 0) | (act == 1 ? kRelu : 0) | (act == 2 ? kRelu6 : 0);
    auto p = GetPrimitive(kFused, Dims(x.dimensions()), Dims(w.dimensions()),
                          Dims(out->dimensions()), Dims(strides), Dims(dilation), Dims(pad_lo),
                          Dims(pad_hi), groups, fusion);
    float* y_ptr = out->typed_data();
    if (residual != nullptr && residual != y_ptr)
      std::copy(residual, residual + out->element_count(), y_ptr);
    std::lock_guard<std::mutex> lock(execute_mutex);
    thread_local dnnl::stream stream(Engine());
    memory x_mem(p->x_md, Engine(), x.typed_data()), y_mem(p->y_md, Engine(), y_ptr);
    memory b_mem(p->bias_md, Engine(), b.typed_data());
    memory user_w(p->user_w_md, Engine(), w.typed_data()), op_w = user_w;
    if (p->reorder_weights) {
      op_w = memory(p->op_w_md, Engine(), ThreadBuffer(0, p->op_w_md.get_size()));
      p->weights_reorder.execute(stream, user_w, op_w);
    }
    memory scratch(memory::desc({static_cast<memory::dim>(p->scratch_bytes)},
                                memory::data_type::u8, Tag::x),
                   Engine(), ThreadBuffer(1, p->scratch_bytes));
    p->op.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, op_w},
                           {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, y_mem},
                           {DNNL_ARG_SCRATCHPAD, scratch}});
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

#define CNNJAX_CONV_ATTRS                                                             \
  .Attr<ffi::Span<const int64_t>>("strides")                                          \
      .Attr<ffi::Span<const int64_t>>("pad_lo")                                       \
      .Attr<ffi::Span<const int64_t>>("pad_hi")                                       \
      .Attr<ffi::Span<const int64_t>>("dilation")                                     \
      .Attr<int64_t>("groups")                                                        \
      .Attr<int64_t>("act")

static ffi::Error FusedImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                            ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                            ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                            ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation,
                            int64_t groups, int64_t act) {
  return RunFused(x, w, b, nullptr, out, strides, pad_lo, pad_hi, dilation, groups, act);
}

static ffi::Error FusedAddImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                               ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> r,
                               ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                               ffi::Span<const int64_t> dilation, int64_t groups, int64_t act) {
  if (r.element_count() != out->element_count())
    return ffi::Error::InvalidArgument("cnnjax oneDNN conv: residual and output shapes differ");
  return RunFused(x, w, b, r.typed_data(), out, strides, pad_lo, pad_hi, dilation, groups, act);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_conv_fused, FusedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNNJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_conv_fused_add, FusedAddImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNNJAX_CONV_ATTRS);

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
