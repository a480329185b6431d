// jcnn's convolutions on oneDNN's primitives: the forward pass, the data gradient and the
// weight gradient, channels-last activations, float32 or bfloat16 (float32 accumulation).
//
// Shapes (jcnn's conventions): x (N, H, W, C), w (F, C, KH, KW), out (N, H', W', F) with
// H' = (H + 2·pad − KH) / stride + 1 (the stride tiles the padded input; jcnn checks that
// before calling). Leading dimensions before those four (from jax.vmap) are independent
// problems, run one after the other.
//
//   forward:          out[n, i, j, f] = Σ_{c, p, q} x_pad[n, s·i + p, s·j + q, c] · w[f, c, p, q]
//   data gradient:    dx = the transpose of the forward map applied to dout (w fixed)
//   weight gradient:  dw[f, c, p, q] = Σ_{n, i, j} x_pad[n, s·i + p, s·j + q, c] · dout[n, i, j, f]
//
// Threads: oneDNN here is built on OpenMP, whose threads would compete with XLA's for the
// same cores. Instead every primitive runs single-threaded, and the batch is split in two
// halves, one on the calling thread and one on a task of XLA's intra-op pool (parallel.h);
// the weight gradient's two partial sums are added in a fixed order, so results do not
// depend on the scheduling. The calling thread's OpenMP thread count is restored afterwards.
//
// Primitives are created once per shape, dtype and direction and kept (oneDNN compiles
// each one); weights are reordered per call into the layout the primitive chose.
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum class Direction { kForward, kData, kWeights };

// One problem's geometry; `n` is the batch of one half.
struct Geometry {
  int64_t n, h, w, c, f, kh, kw, ho, wo, stride, pad;
  memory::data_type type;

  auto Key(Direction d) const {
    return std::make_tuple(static_cast<int>(d), n, h, w, c, f, kh, kw, ho, wo, stride, pad,
                           static_cast<int>(type));
  }
  memory::desc Input() const { return memory::desc({n, c, h, w}, type, Tag::nhwc); }
  memory::desc Output() const { return memory::desc({n, f, ho, wo}, type, Tag::nhwc); }
  memory::desc Filters(memory::data_type t, Tag tag) const {
    return memory::desc({f, c, kh, kw}, t, tag);
  }
  memory::dims Strides() const { return {stride, stride}; }
  memory::dims Padding() const { return {pad, pad}; }
};

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A convolution primitive and the reorder between jcnn's filter layout (oihw, in `user`
// type) and the primitive's (`chosen`); the reorder is empty when the two are the same.
struct Plan {
  dnnl::primitive conv;
  memory::desc scratchpad, chosen, user;
  dnnl::reorder reorder;  // user -> chosen (forward, data), chosen -> user (weights)
  bool needs_reorder = false;
};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, const dnnl::primitive_attr& attr) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Input(), g.Filters(g.type, Tag::any), g.Output(), g.Strides(), g.Padding(), g.Padding(),
      attr);
}

Plan MakePlan(const Geometry& g, Direction d) {
  const dnnl::primitive_attr attr = UserScratchpad();
  Plan plan;
  if (d == Direction::kForward) {
    auto pd = ForwardDesc(g, attr);
    plan.conv = dnnl::convolution_forward(pd);
    plan.scratchpad = pd.scratchpad_desc();
    plan.chosen = pd.weights_desc();
  } else if (d == Direction::kData) {
    auto hint = ForwardDesc(g, dnnl::primitive_attr());
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Input(), g.Filters(g.type, Tag::any),
        g.Output(), g.Strides(), g.Padding(), g.Padding(), hint, attr);
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.scratchpad = pd.scratchpad_desc();
    plan.chosen = pd.weights_desc();
  } else {
    auto hint = ForwardDesc(g, dnnl::primitive_attr());
    // Partial sums of the two halves stay float32 until they are added.
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Input(),
        g.Filters(memory::data_type::f32, Tag::any), g.Output(), g.Strides(), g.Padding(),
        g.Padding(), hint, attr);
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.scratchpad = pd.scratchpad_desc();
    plan.chosen = pd.diff_weights_desc();
  }
  const memory::data_type user_type = d == Direction::kWeights ? memory::data_type::f32 : g.type;
  plan.user = g.Filters(user_type, Tag::oihw);
  plan.needs_reorder = plan.chosen != plan.user;
  if (plan.needs_reorder) {
    auto from = d == Direction::kWeights ? plan.chosen : plan.user;
    auto to = d == Direction::kWeights ? plan.user : plan.chosen;
    plan.reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  }
  return plan;
}

// Plans live for the whole process: one per shape, dtype and direction seen.
const Plan& PlanFor(const Geometry& g, Direction d) {
  static std::mutex mutex;
  static std::map<decltype(g.Key(d)), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = plans[g.Key(d)];
  if (!slot) slot = std::make_unique<Plan>(MakePlan(g, d));
  return *slot;
}

// Scratch memory of the calling thread, grown on demand.
void* Scratch(std::vector<std::vector<char>>& pool, int which, size_t bytes) {
  if (pool.size() <= static_cast<size_t>(which)) pool.resize(which + 1);
  if (pool[which].size() < bytes) pool[which].resize(bytes);
  return pool[which].data();
}

// oneDNN single-threaded on this thread while it lives; the thread's OpenMP setting is
// restored afterwards, also when oneDNN throws.
class SingleThreaded {
 public:
  SingleThreaded() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(saved_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int saved_;
};

// Runs one half: `input` is x (forward, weights) or dout (data), `filters` is w (forward,
// data) or the half's float32 oihw partial dw (weights), `output` is out, dx or unused.
void RunHalf(const Geometry& g, Direction d, const void* x, const void* dout, const void* w,
             void* out, float* dw_partial) {
  const SingleThreaded single_threaded;
  {
    thread_local std::vector<std::vector<char>> scratch;
    const Plan& plan = PlanFor(g, d);
    const dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    memory scratchpad(plan.scratchpad, engine, Scratch(scratch, 0, plan.scratchpad.get_size()));
    memory filters_user(plan.user, engine,
                        d == Direction::kWeights ? static_cast<void*>(dw_partial)
                                                 : const_cast<void*>(w));
    memory filters = filters_user;
    if (plan.needs_reorder) {
      filters = memory(plan.chosen, engine, Scratch(scratch, 1, plan.chosen.get_size()));
      if (d != Direction::kWeights) plan.reorder.execute(stream, filters_user, filters);
    }
    if (d == Direction::kForward) {
      memory src(g.Input(), engine, const_cast<void*>(x)), dst(g.Output(), engine, out);
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, filters},
                                 {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (d == Direction::kData) {
      memory diff_dst(g.Output(), engine, const_cast<void*>(dout)), diff_src(g.Input(), engine, out);
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, filters},
                                 {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      memory src(g.Input(), engine, const_cast<void*>(x));
      memory diff_dst(g.Output(), engine, const_cast<void*>(dout));
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                 {DNNL_ARG_DIFF_WEIGHTS, filters},
                                 {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (plan.needs_reorder) plan.reorder.execute(stream, filters, filters_user);
    }
    stream.wait();
  }
}

size_t Bytes(memory::data_type t) { return t == memory::data_type::f32 ? 4 : 2; }

uint16_t ToBfloat16(float v) {  // round to nearest even, as XLA's convert does
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// One problem (one vmap index): splits the batch in two halves over both cores. Returns
// the first error of either half ("" if none): nothing may throw on a pool thread.
std::string RunProblem(ffi::ThreadPool& pool, const Geometry& all, Direction d, const char* x,
                       const char* dout, const char* w, char* result) {
  const int64_t halves = all.n >= 2 ? 2 : 1;
  const int64_t first = (all.n + 1) / 2;
  const size_t unit = Bytes(all.type);
  const size_t x_image = all.h * all.w * all.c * unit, out_image = all.ho * all.wo * all.f * unit;
  const int64_t filter_count = all.f * all.c * all.kh * all.kw;
  std::vector<float> partial(d == Direction::kWeights ? halves * filter_count : 0);
  std::mutex error_mutex;
  std::string error;
  jcnn::ParallelFor(pool, halves, true, [&](int64_t half) {
    Geometry g = all;
    const int64_t start = half == 0 ? 0 : first;
    g.n = half == 0 ? first : all.n - first;
    if (halves == 1) g.n = all.n;
    const char* x_half = x ? x + start * x_image : nullptr;
    const char* dout_half = dout ? dout + start * out_image : nullptr;
    char* out_half = nullptr;
    if (d == Direction::kForward) out_half = result + start * out_image;
    if (d == Direction::kData) out_half = result + start * x_image;
    try {
      RunHalf(g, d, x_half, dout_half, w, out_half,
              d == Direction::kWeights ? partial.data() + half * filter_count : nullptr);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (error.empty()) error = std::string("oneDNN: ") + e.what();
    }
  });
  if (!error.empty() || d != Direction::kWeights) return error;
  for (int64_t i = 0; i < filter_count; ++i) {
    const float sum = halves == 2 ? partial[i] + partial[filter_count + i] : partial[i];
    if (all.type == memory::data_type::f32) {
      reinterpret_cast<float*>(result)[i] = sum;
    } else {
      reinterpret_cast<uint16_t*>(result)[i] = ToBfloat16(sum);
    }
  }
  return error;
}

ffi::Error TypeOf(const ffi::AnyBuffer& a, memory::data_type* type) {
  switch (a.element_type()) {
    case ffi::DataType::F32:
      *type = memory::data_type::f32;
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      *type = memory::data_type::bf16;
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("operands must be float32 or bfloat16");
  }
}

// The trailing four dimensions of a buffer; `batch` gets the product of the others.
std::vector<int64_t> Last4(ffi::Span<const int64_t> dims, int64_t* batch) {
  const size_t rank = dims.size();
  *batch = 1;
  for (size_t i = 0; i + 4 < rank; ++i) *batch *= dims[i];
  return {dims[rank - 4], dims[rank - 3], dims[rank - 2], dims[rank - 1]};
}

// Runs `d` for every vmap index; images (N, H, W, C) and (N, H', W', F), filters (F, C, KH, KW).
ffi::Error Run(ffi::ThreadPool& pool, Direction d, const ffi::AnyBuffer& images,
               const ffi::AnyBuffer& grads_or_filters, ffi::Result<ffi::AnyBuffer>& result,
               int64_t stride, int64_t pad) {
  const ffi::AnyBuffer* x = nullptr;
  const ffi::AnyBuffer* dout = nullptr;
  const ffi::AnyBuffer* w = nullptr;
  // forward: (x, w) -> out; data: (dout, w) -> dx; weights: (dout, x) -> dw
  if (d == Direction::kForward) x = &images, w = &grads_or_filters;
  if (d == Direction::kData) dout = &images, w = &grads_or_filters;
  if (d == Direction::kWeights) dout = &images, x = &grads_or_filters;
  const ffi::AnyBuffer& filters_like = w ? *w : static_cast<const ffi::AnyBuffer&>(*result);
  const ffi::AnyBuffer& x_like = x ? *x : static_cast<const ffi::AnyBuffer&>(*result);
  const ffi::AnyBuffer& out_like = dout ? *dout : static_cast<const ffi::AnyBuffer&>(*result);
  for (const ffi::AnyBuffer* b : {&filters_like, &x_like, &out_like}) {
    if (b->dimensions().size() < 4) return ffi::Error::InvalidArgument("operands must be rank >= 4");
  }
  Geometry g{};
  if (auto e = TypeOf(images, &g.type); e.failure()) return e;
  int64_t problems, unused;
  auto xs = Last4(x_like.dimensions(), &problems);
  auto os = Last4(out_like.dimensions(), &unused);
  auto ws = Last4(filters_like.dimensions(), &unused);
  g.n = xs[0], g.h = xs[1], g.w = xs[2], g.c = xs[3];
  g.ho = os[1], g.wo = os[2], g.f = os[3];
  g.kh = ws[2], g.kw = ws[3];
  g.stride = stride, g.pad = pad;
  if (ws[0] != g.f || ws[1] != g.c || os[0] != g.n) {
    return ffi::Error::InvalidArgument("inconsistent convolution shapes");
  }
  const size_t unit = Bytes(g.type);
  const size_t x_bytes = g.n * g.h * g.w * g.c * unit, out_bytes = g.n * g.ho * g.wo * g.f * unit;
  const size_t w_bytes = g.f * g.c * g.kh * g.kw * unit;
  auto base = [](const ffi::AnyBuffer* b) {
    return b ? static_cast<const char*>(b->untyped_data()) : nullptr;
  };
  char* out = static_cast<char*>(result->untyped_data());
  const size_t result_bytes = d == Direction::kForward ? out_bytes
                              : d == Direction::kData  ? x_bytes
                                                       : w_bytes;
  for (int64_t p = 0; p < problems; ++p) {
    const std::string error = RunProblem(
        pool, g, d, x ? base(x) + p * x_bytes : nullptr,
        dout ? base(dout) + p * out_bytes : nullptr, w ? base(w) + p * w_bytes : nullptr,
        out + p * result_bytes);
    if (!error.empty()) return ffi::Error::Internal(error);
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, int64_t stride,
                       int64_t pad, ffi::Result<ffi::AnyBuffer> out) {
  return Run(pool, Direction::kForward, x, w, out, stride, pad);
}

ffi::Error ConvBackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dout, ffi::AnyBuffer w,
                            int64_t stride, int64_t pad, ffi::Result<ffi::AnyBuffer> dx) {
  return Run(pool, Direction::kData, dout, w, dx, stride, pad);
}

ffi::Error ConvBackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer dout, ffi::AnyBuffer x,
                               int64_t stride, int64_t pad, ffi::Result<ffi::AnyBuffer> dw) {
  return Run(pool, Direction::kWeights, dout, x, dw, stride, pad);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x (..., N, H, W, C)
                                  .Arg<ffi::AnyBuffer>()  // w (..., F, C, KH, KW)
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad")
                                  .Ret<ffi::AnyBuffer>());  // out (..., N, H', W', F)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnConvBackwardData, ConvBackwardData,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // dout (..., N, H', W', F)
                                  .Arg<ffi::AnyBuffer>()  // w (..., F, C, KH, KW)
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad")
                                  .Ret<ffi::AnyBuffer>());  // dx (..., N, H, W, C)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnConvBackwardWeights, ConvBackwardWeights,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // dout (..., N, H', W', F)
                                  .Arg<ffi::AnyBuffer>()  // x (..., N, H, W, C)
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad")
                                  .Ret<ffi::AnyBuffer>());  // dw (..., F, C, KH, KW)
