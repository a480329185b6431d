// jcnn's compiled CPU kernels for training-mode batchnorm followed by relu, features last.
//
// x is viewed as (rows, C): every axis but the last is reduced over (N for (N, D) input,
// N, H, W for NHWC). Both passes run over blocks of rows small enough to stay in cache,
// shared between the calling thread and one pool task (parallel.h); per-block partial sums
// are kept apart and merged in block order, so results do not depend on the scheduling.
//
// Forward:  mean, var (biased) per channel; out = max(0, x·s + t), s = γ/√(var + ε),
//           t = β − mean·s. Block statistics are two-pass within the block (block mean,
//           then Σ(x − block mean)²) and merged with Chan's formula in double: robust to a
//           mean far larger than the spread.
// Backward: with g = dout where x·s + t > 0 (else 0) and x̂ = (x − mean)/√(var + ε),
//           dβ = Σg, dγ = Σ g·x̂,
//           dx = s·(g − dβ/m − x̂·dγ/m) + dmean/m + 2·dvar·(x − mean)/m,
//           m = rows; dmean and dvar are the cotangents of the returned batch statistics.
// Leading dimensions of gamma (from jax.vmap) are a batch of independent problems.
// Storage is float32, float64 or bfloat16; bfloat16 values are computed in float32 (each
// output rounded to nearest even once), float32 and float64 in their own type.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t batch;     // independent problems (vmap)
  int64_t rows;      // values per channel in each problem
  int64_t channels;  // C, the last axis
  int64_t block;     // rows per block
  int64_t blocks;
};

Shape ShapeOf(const ffi::AnyBuffer& x, const ffi::AnyBuffer& gamma) {
  Shape s;
  s.channels = gamma.dimensions().back();
  s.batch = s.channels ? gamma.element_count() / s.channels : 0;
  s.rows = s.batch ? x.element_count() / (s.batch * s.channels) : 0;
  s.block = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.channels));
  s.blocks = (s.rows + s.block - 1) / s.block;
  return s;
}

// Calls body(b, r0, r1) for every block b of rows [r0, r1), on both cores when worth it.
template <typename Pool, typename Body>
void ForBlocks(Pool& pool, const Shape& s, Body&& body) {
  const bool use_pool = s.rows * s.channels >= (1 << 16);
  jcnn::ParallelFor(pool, s.blocks, use_pool, [&](int64_t b) {
    const int64_t r0 = b * s.block;
    body(b, r0, std::min(s.rows, r0 + s.block));
  });
}

// bfloat16 storage: the upper half of a float32.
struct Bf16 {
  uint16_t bits;
};

// The type a storage type S is computed in.
template <typename S>
using Compute = std::conditional_t<std::is_same_v<S, Bf16>, float, S>;

inline uint16_t RoundToBf16(uint32_t bits) {  // nearest even; NaN stays a quiet NaN
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <typename S>
inline S FromDouble(double v) {
  if constexpr (std::is_same_v<S, Bf16>) {
    const float f = static_cast<float>(v);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return Bf16{RoundToBf16(bits)};
  } else {
    return static_cast<S>(v);
  }
}

template <typename S>
inline double ToDouble(const S& v) {
  if constexpr (std::is_same_v<S, Bf16>) {
    const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  } else {
    return static_cast<double>(v);
  }
}

// c per-channel values in the compute type.
template <typename S>
std::vector<Compute<S>> Widen(const S* p, int64_t c) {
  std::vector<Compute<S>> out(c);
  for (int64_t k = 0; k < c; ++k) out[k] = static_cast<Compute<S>>(ToDouble(p[k]));
  return out;
}

// s = γ/√(var + ε) and t = β − mean·s, from the statistics as stored (rounded to T), so the
// forward and the backward pass compute the same relu mask.
template <typename T>
struct ScaleShift {
  std::vector<T> scale, shift, inv_std;

  ScaleShift(const T* mean, const T* var, const T* gamma, const T* beta, double eps, int64_t c)
      : scale(c), shift(c), inv_std(c) {
    for (int64_t k = 0; k < c; ++k) {
      const double inv = 1.0 / std::sqrt(static_cast<double>(var[k]) + eps);
      inv_std[k] = static_cast<T>(inv);
      scale[k] = static_cast<T>(gamma[k] * inv);
      shift[k] = static_cast<T>(beta[k] - static_cast<double>(mean[k]) * scale[k]);
    }
  }
};

// Channels go by in chunks of one 64-byte vector (GCC/Clang vector extensions: one AVX-512
// register, or two AVX2 ones), then one at a time; within a block, each chunk runs down the
// rows with its per-channel constants and sums in registers. Each body is written once,
// generically, for a chunk type V: Vec<T> or plain T.
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename V>
inline V Load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
inline void Store(void* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// A chunk V (of the compute type) from storage S, and back; plain copies unless S is Bf16.
template <typename V, typename S>
inline V LoadAs(const S* p) {
  if constexpr (std::is_same_v<S, Bf16>) {
    constexpr size_t n = sizeof(V) / sizeof(float);
    uint32_t bits[n];
    for (size_t j = 0; j < n; ++j) bits[j] = static_cast<uint32_t>(p[j].bits) << 16;
    V v;
    std::memcpy(&v, bits, sizeof v);
    return v;
  } else {
    return Load<V>(p);
  }
}

template <typename S, typename V>
inline void StoreAs(S* p, const V& v) {
  if constexpr (std::is_same_v<S, Bf16>) {
    constexpr size_t n = sizeof(V) / sizeof(float);
    uint32_t bits[n];
    std::memcpy(bits, &v, sizeof v);
    for (size_t j = 0; j < n; ++j) p[j].bits = RoundToBf16(bits[j]);
  } else {
    Store(p, v);
  }
}

// dst[0 : lanes] = v, widened to double.
template <typename T, typename V>
inline void Spill(const V& v, double* dst) {
  T lanes[sizeof(V) / sizeof(T)];
  std::memcpy(lanes, &v, sizeof v);
  for (size_t j = 0; j < sizeof(V) / sizeof(T); ++j) dst[j] = lanes[j];
}

// Calls body(V{}, k) for each chunk of channels starting at k.
template <typename T, typename Body>
inline void ForChannels(int64_t c, Body&& body) {
  constexpr int64_t kLanes = sizeof(Vec<T>) / sizeof(T);
  int64_t k = 0;
  for (; k + kLanes <= c; k += kLanes) body(Vec<T>{}, k);
  for (; k < c; ++k) body(T{}, k);
}

// The pre-activation x·s + t, computed by the same expression in both passes so that the
// forward's relu and the backward's mask agree.
template <typename V>
inline V Preactivation(const V& x, const V& scale, const V& shift) {
  return x * scale + shift;
}

template <typename S, typename Pool>
void Forward(Pool& pool, const Shape& s, const S* x, const S* gamma_s, const S* beta_s,
             double eps, S* out, S* mean_s, S* var_s) {
  using T = Compute<S>;
  const int64_t c = s.channels;
  std::vector<double> block_mean(s.blocks * c), block_m2(s.blocks * c);
  ForBlocks(pool, s, [&](int64_t b, int64_t r0, int64_t r1) {
    ForChannels<T>(c, [&](auto chunk, int64_t k) {
      using V = decltype(chunk);
      // The block mean as the first row plus the mean offset from it: the offsets are
      // small, so their float sum stays exact where one of the values themselves would not.
      const V first = LoadAs<V>(x + r0 * c + k);
      V sum{}, m2{};
      for (int64_t r = r0 + 1; r < r1; ++r) sum += LoadAs<V>(x + r * c + k) - first;
      const V m = first + sum / static_cast<T>(r1 - r0);
      for (int64_t r = r0; r < r1; ++r) {
        const V d = LoadAs<V>(x + r * c + k) - m;
        m2 += d * d;
      }
      Spill<T>(m, block_mean.data() + b * c + k);
      Spill<T>(m2, block_m2.data() + b * c + k);
    });
  });
  std::vector<double> n_mean(c, 0.0), n_m2(c, 0.0);
  double n = 0.0;
  for (int64_t b = 0; b < s.blocks; ++b) {
    const double nb = static_cast<double>(std::min(s.rows, (b + 1) * s.block) - b * s.block);
    const double total = n + nb;
    for (int64_t k = 0; k < c; ++k) {
      const double delta = block_mean[b * c + k] - n_mean[k];
      n_mean[k] += delta * nb / total;
      n_m2[k] += block_m2[b * c + k] + delta * delta * n * nb / total;
    }
    n = total;
  }
  // The statistics as stored (rounded to S) are what the backward pass will read.
  std::vector<T> mean(c), var(c);
  for (int64_t k = 0; k < c; ++k) {
    mean_s[k] = FromDouble<S>(n_mean[k]);
    var_s[k] = FromDouble<S>(n > 0 ? n_m2[k] / n : 0.0);
    mean[k] = static_cast<T>(ToDouble(mean_s[k]));
    var[k] = static_cast<T>(ToDouble(var_s[k]));
  }
  const std::vector<T> gamma = Widen(gamma_s, c), beta = Widen(beta_s, c);
  const ScaleShift<T> affine(mean.data(), var.data(), gamma.data(), beta.data(), eps, c);
  const T* sc = affine.scale.data();
  const T* sh = affine.shift.data();
  ForBlocks(pool, s, [&](int64_t b, int64_t r0, int64_t r1) {
    ForChannels<T>(c, [&](auto chunk, int64_t k) {
      using V = decltype(chunk);
      const V scale_k = Load<V>(sc + k), shift_k = Load<V>(sh + k);
      for (int64_t r = r0; r < r1; ++r) {
        const V y = Preactivation(LoadAs<V>(x + r * c + k), scale_k, shift_k);
        StoreAs(out + r * c + k, y < V{} ? V{} : y);  // NaN stays NaN
      }
    });
  });
}

template <typename S, typename Pool>
void Backward(Pool& pool, const Shape& s, const S* dout, const S* x, const S* mean_s,
              const S* var_s, const S* gamma_s, const S* beta_s, const S* dmean_s,
              const S* dvar_s, double eps, S* dx, S* dgamma, S* dbeta) {
  using T = Compute<S>;
  const int64_t c = s.channels;
  const std::vector<T> mean_v = Widen(mean_s, c), var = Widen(var_s, c);
  const std::vector<T> gamma = Widen(gamma_s, c), beta = Widen(beta_s, c);
  const std::vector<T> dmean = Widen(dmean_s, c), dvar = Widen(dvar_s, c);
  const T* mean = mean_v.data();
  const ScaleShift<T> affine(mean, var.data(), gamma.data(), beta.data(), eps, c);
  const T* sc = affine.scale.data();
  const T* sh = affine.shift.data();
  std::vector<double> block_g(s.blocks * c), block_gx(s.blocks * c);
  ForBlocks(pool, s, [&](int64_t b, int64_t r0, int64_t r1) {
    ForChannels<T>(c, [&](auto chunk, int64_t k) {
      using V = decltype(chunk);
      const V scale_k = Load<V>(sc + k), shift_k = Load<V>(sh + k), mean_k = Load<V>(mean + k);
      V sum_g{}, sum_gx{};
      for (int64_t r = r0; r < r1; ++r) {
        const V xv = LoadAs<V>(x + r * c + k);
        const V g = Preactivation(xv, scale_k, shift_k) > V{} ? LoadAs<V>(dout + r * c + k) : V{};
        sum_g += g;
        sum_gx += g * (xv - mean_k);
      }
      Spill<T>(sum_g, block_g.data() + b * c + k);
      Spill<T>(sum_gx, block_gx.data() + b * c + k);
    });
  });
  const double m = static_cast<double>(s.rows);
  // dx = s·g − a − (x − mean)·q with per-channel constants a and q.
  std::vector<T> a(c), q(c);
  for (int64_t k = 0; k < c; ++k) {
    double g = 0.0, gx = 0.0;
    for (int64_t b = 0; b < s.blocks; ++b) {
      g += block_g[b * c + k];
      gx += block_gx[b * c + k];
    }
    const double inv = affine.inv_std[k];
    dbeta[k] = FromDouble<S>(g);
    dgamma[k] = FromDouble<S>(gx * inv);
    a[k] = static_cast<T>(sc[k] * g / m - dmean[k] / m);
    q[k] = static_cast<T>(sc[k] * gx * inv * inv / m - 2.0 * dvar[k] / m);
  }
  const T* pa = a.data();
  const T* pq = q.data();
  ForBlocks(pool, s, [&](int64_t b, int64_t r0, int64_t r1) {
    ForChannels<T>(c, [&](auto chunk, int64_t k) {
      using V = decltype(chunk);
      const V scale_k = Load<V>(sc + k), shift_k = Load<V>(sh + k), mean_k = Load<V>(mean + k);
      const V a_k = Load<V>(pa + k), q_k = Load<V>(pq + k);
      for (int64_t r = r0; r < r1; ++r) {
        const V xv = LoadAs<V>(x + r * c + k);
        const V g = Preactivation(xv, scale_k, shift_k) > V{} ? LoadAs<V>(dout + r * c + k) : V{};
        StoreAs(dx + r * c + k, scale_k * g - a_k - (xv - mean_k) * q_k);
      }
    });
  });
}

template <typename T>
const T* In(const ffi::AnyBuffer& b, int64_t offset) {
  return static_cast<const T*>(b.untyped_data()) + offset;
}

template <typename T>
T* Out(ffi::Result<ffi::AnyBuffer>& b, int64_t offset) {
  return static_cast<T*>(b->untyped_data()) + offset;
}

template <typename T>
void ForwardAll(ffi::ThreadPool& pool, const Shape& s, const ffi::AnyBuffer& x,
                const ffi::AnyBuffer& gamma, const ffi::AnyBuffer& beta, double eps,
                ffi::Result<ffi::AnyBuffer>& out, ffi::Result<ffi::AnyBuffer>& mean,
                ffi::Result<ffi::AnyBuffer>& var) {
  const int64_t n = s.rows * s.channels, c = s.channels;
  for (int64_t i = 0; i < s.batch; ++i) {
    Forward(pool, s, In<T>(x, i * n), In<T>(gamma, i * c), In<T>(beta, i * c), eps,
            Out<T>(out, i * n), Out<T>(mean, i * c), Out<T>(var, i * c));
  }
}

template <typename T>
void BackwardAll(ffi::ThreadPool& pool, const Shape& s, const ffi::AnyBuffer& dout,
                 const ffi::AnyBuffer& x, const ffi::AnyBuffer& mean, const ffi::AnyBuffer& var,
                 const ffi::AnyBuffer& gamma, const ffi::AnyBuffer& beta,
                 const ffi::AnyBuffer& dmean, const ffi::AnyBuffer& dvar, double eps,
                 ffi::Result<ffi::AnyBuffer>& dx, ffi::Result<ffi::AnyBuffer>& dgamma,
                 ffi::Result<ffi::AnyBuffer>& dbeta) {
  const int64_t n = s.rows * s.channels, c = s.channels;
  for (int64_t i = 0; i < s.batch; ++i) {
    Backward(pool, s, In<T>(dout, i * n), In<T>(x, i * n), In<T>(mean, i * c),
             In<T>(var, i * c), In<T>(gamma, i * c), In<T>(beta, i * c), In<T>(dmean, i * c),
             In<T>(dvar, i * c), eps, Out<T>(dx, i * n), Out<T>(dgamma, i * c),
             Out<T>(dbeta, i * c));
  }
}

// Checks gamma's rank and calls run(T{}) with T the element type of x: float, double or
// Bf16.
template <typename Run>
ffi::Error WithFloatType(const ffi::AnyBuffer& x, const ffi::AnyBuffer& gamma, Run&& run) {
  if (gamma.dimensions().size() == 0) return ffi::Error::InvalidArgument("gamma must be (..., C)");
  switch (x.element_type()) {
    case ffi::DataType::F32:
      run(float{});
      return ffi::Error::Success();
    case ffi::DataType::F64:
      run(double{});
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      run(Bf16{});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("x must be float32, float64 or bfloat16");
  }
}

ffi::Error BatchnormReluForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer gamma,
                                ffi::AnyBuffer beta, double eps,
                                ffi::Result<ffi::AnyBuffer> out,
                                ffi::Result<ffi::AnyBuffer> mean,
                                ffi::Result<ffi::AnyBuffer> var) {
  return WithFloatType(x, gamma, [&](auto type) {
    using T = decltype(type);
    ForwardAll<T>(pool, ShapeOf(x, gamma), x, gamma, beta, eps, out, mean, var);
  });
}

ffi::Error BatchnormReluBackward(ffi::ThreadPool pool, ffi::AnyBuffer dout, ffi::AnyBuffer x,
                                 ffi::AnyBuffer mean, ffi::AnyBuffer var, ffi::AnyBuffer gamma,
                                 ffi::AnyBuffer beta, ffi::AnyBuffer dmean, ffi::AnyBuffer dvar,
                                 double eps, ffi::Result<ffi::AnyBuffer> dx,
                                 ffi::Result<ffi::AnyBuffer> dgamma,
                                 ffi::Result<ffi::AnyBuffer> dbeta) {
  return WithFloatType(x, gamma, [&](auto type) {
    using T = decltype(type);
    BackwardAll<T>(pool, ShapeOf(x, gamma), dout, x, mean, var, gamma, beta, dmean, dvar, eps,
                   dx, dgamma, dbeta);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnBatchnormReluForward, BatchnormReluForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x (..., C)
                                  .Arg<ffi::AnyBuffer>()  // gamma (C,)
                                  .Arg<ffi::AnyBuffer>()  // beta (C,)
                                  .Attr<double>("eps")
                                  .Ret<ffi::AnyBuffer>()   // out, like x
                                  .Ret<ffi::AnyBuffer>()   // batch mean (C,)
                                  .Ret<ffi::AnyBuffer>());  // batch variance (C,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnBatchnormReluBackward, BatchnormReluBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // dout, like x
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // mean (C,)
                                  .Arg<ffi::AnyBuffer>()  // var (C,)
                                  .Arg<ffi::AnyBuffer>()  // gamma (C,)
                                  .Arg<ffi::AnyBuffer>()  // beta (C,)
                                  .Arg<ffi::AnyBuffer>()  // dmean (C,)
                                  .Arg<ffi::AnyBuffer>()  // dvar (C,)
                                  .Attr<double>("eps")
                                  .Ret<ffi::AnyBuffer>()   // dx
                                  .Ret<ffi::AnyBuffer>()   // dgamma
                                  .Ret<ffi::AnyBuffer>());  // dbeta
