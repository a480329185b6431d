// jcnn's compiled CPU kernel: (N, H, W, C) -> (C, H, W, N), registered with XLA's FFI.
//
// XLA's CPU backend wants a channels-last activation channel-major for the weight gradient of
// a convolution, and emits that transpose as an untiled strided loop. Here each spatial
// position p is one (N x C) -> (C x N) block: N contiguous rows of C are copied into a small
// buffer, then written out as C contiguous runs of N. Chunks of positions are shared between
// the calling thread and one task on XLA's intra-op thread pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 64;    // images per buffered block
constexpr int64_t kCols = 256;   // channels per buffered block

template <typename T>
void TransposePositions(const T* x, T* y, int64_t n_total, int64_t positions, int64_t channels,
                        int64_t p_begin, int64_t p_end) {
  alignas(64) T block[kRows * kCols];
  for (int64_t p = p_begin; p < p_end; ++p) {
    for (int64_t c0 = 0; c0 < channels; c0 += kCols) {
      const int64_t nc = std::min(kCols, channels - c0);
      for (int64_t n0 = 0; n0 < n_total; n0 += kRows) {
        const int64_t nn = std::min(kRows, n_total - n0);
        for (int64_t n = 0; n < nn; ++n) {
          std::memcpy(block + n * nc, x + ((n0 + n) * positions + p) * channels + c0,
                      nc * sizeof(T));
        }
        for (int64_t c = 0; c < nc; ++c) {
          T* out = y + ((c0 + c) * positions + p) * n_total + n0;
          for (int64_t n = 0; n < nn; ++n) out[n] = block[n * nc + c];
        }
      }
    }
  }
}

template <typename T>
void Run(ffi::ThreadPool& pool, const void* x_data, void* y_data, int64_t n, int64_t positions,
         int64_t channels) {
  const T* x = static_cast<const T*>(x_data);
  T* y = static_cast<T*>(y_data);
  const int64_t chunk = std::max<int64_t>(1, positions / 16);
  const int64_t chunks = (positions + chunk - 1) / chunk;
  const bool use_pool = positions >= 16 && n * channels * positions >= (1 << 16);
  jcnn::ParallelFor(pool, chunks, use_pool, [&](int64_t i) {
    TransposePositions(x, y, n, positions, channels, i * chunk,
                       std::min(positions, (i + 1) * chunk));
  });
}

// x is (..., N, H, W, C): leading dimensions (from jax.vmap) are a batch of independent arrays.
ffi::Error ToChannelMajor(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  const auto dims = x.dimensions();
  const size_t rank = dims.size();
  if (rank < 4) return ffi::Error::InvalidArgument("x must be (..., N, H, W, C)");
  int64_t batch = 1;
  for (size_t i = 0; i + 4 < rank; ++i) batch *= dims[i];
  const int64_t n = dims[rank - 4], positions = dims[rank - 3] * dims[rank - 2];
  const int64_t channels = dims[rank - 1];
  const size_t width = ffi::ByteWidth(x.element_type());
  const size_t bytes = width * n * positions * channels;
  const char* x_data = static_cast<const char*>(x.untyped_data());
  char* y_data = static_cast<char*>(y->untyped_data());
  for (int64_t b = 0; b < batch; ++b) {
    const void* xb = x_data + b * bytes;
    void* yb = y_data + b * bytes;
    switch (width) {
      case 2:
        Run<uint16_t>(pool, xb, yb, n, positions, channels);
        break;
      case 4:
        Run<uint32_t>(pool, xb, yb, n, positions, channels);
        break;
      case 8:
        Run<uint64_t>(pool, xb, yb, n, positions, channels);
        break;
      default:
        return ffi::Error::InvalidArgument("element size must be 2, 4 or 8 bytes");
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnToChannelMajor, ToChannelMajor,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
