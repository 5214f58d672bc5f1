// Net1D's grouped 1-D convolution on CPU: 16 channels per group, "SAME" padding (left share
// p // 2), stride 1 or 2, channels-last float32. An XLA FFI handler ("crema_grouped_conv"),
// compiled once per machine by crema_jax/runtime/native.py; crema_jax/models/grouped_conv.py
// says when it is used and holds the XLA formulation it equals.
//
//   x (B, T, C), w (K, 16, C) (XLA's WIO: group g's outputs are channels 16g..16g+15 and read
//   input channels 16g..16g+15), bias (C) -> y (B, ceil(T / S), C)
//   y[b, t, 16g + o] = bias[16g + o] + sum_k sum_i x[b, t S + k - left, 16g + i] w[k, i, 16g + o]
//
// The work: chunks of (ECG, run of output positions, range of groups), taken from a shared
// counter by the calling thread and by XLA's intra-op threads. A chunk is a run of positions of
// every group where the batch has positions enough for about 4 chunks per worker of at least a
// tile each; otherwise (a short signal, a small batch: Net1D's late stages at batch 1) it is all
// of one ECG's positions for a range of groups, so that each group's weights are read by one
// worker (1.1-1.2x at those shapes, measured). Within a chunk, tiles of TILE positions; per
// tile and group, the group's input rows are copied (zeros outside the signal: the padding)
// into a compact buffer of 64-byte rows, then R output positions at a time are accumulated in R
// 16-lane vectors (one output channel per lane): per tap and input channel one weight vector
// load and R fused multiply-adds whose other operand is an input value broadcast from the
// buffer at a constant offset. Weights are read where they are (a weight vector is loaded once
// per register block; packing them per call measured no faster at batch 64 and slower at 1).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // unaligned access

constexpr int R = 12;      // output positions per register block
constexpr int TILE = 5 * R;  // output positions per packed input tile (whole blocks)
constexpr int64_t W = 16;  // channels per group

struct Shape {
  int64_t B, T, C, K, S, To, left;
};

// acc[r] = bias + sum_k sum_i xp[(r S + k) W + i] * wg[(k W + i) C + 0..15]; the first nr stored.
template <int S>
inline void block(const float* xp, const float* wg, v16 bias, int64_t K, int nr, float* out,
                  int64_t C) {
  v16 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = bias;
  for (int64_t k = 0; k < K; ++k) {
    const float* q = xp + k * W;
    const float* wk = wg + k * W * C;
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      const v16 wv = *reinterpret_cast<const v16u*>(wk + i * C);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r] += wv * q[r * S * W + i];
    }
  }
  for (int r = 0; r < nr; ++r) *reinterpret_cast<v16u*>(out + r * C) = acc[r];
}

// Output positions [ta, tb) of one ECG (xb, ob), every group; xp: this worker's buffer.
template <int S>
void run_tile(const Shape& s, const float* xb, const float* w, const float* bias, float* ob,
              int64_t ta, int64_t tb, int64_t g0, int64_t g1, float* xp) {
  const int64_t first = ta * S - s.left;
  const int64_t rows = ((tb - ta + R - 1) / R * R - 1) * S + s.K;  // a whole last block's rows
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t j = 0; j < rows; ++j) {
      const int64_t pos = first + j;
      if (pos >= 0 && pos < s.T) {
        std::memcpy(xp + j * W, xb + pos * s.C + g * W, W * sizeof(float));
      } else {
        std::memset(xp + j * W, 0, W * sizeof(float));
      }
    }
    const float* wg = w + g * W;
    const v16 bv = *reinterpret_cast<const v16u*>(bias + g * W);
    for (int64_t t0 = ta; t0 < tb; t0 += R) {
      const int nr = static_cast<int>(std::min<int64_t>(R, tb - t0));
      block<S>(xp + (t0 - ta) * S * W, wg, bv, s.K, nr, ob + t0 * s.C + g * W, s.C);
    }
  }
}

// Shared by the calling thread and the tasks it schedules; a task that starts after every chunk
// was taken returns at once (it holds a shared_ptr, so a late start never sees freed state).
struct Work {
  Shape s;
  const float* x;
  const float* bias;
  float* y;
  const float* w;
  int64_t chunk, per_ecg, group_chunk, group_chunks, chunks;
  std::vector<float> buffers;
  int64_t buffer_floats;
  std::atomic<int64_t> next{0}, done{0}, slots{0};

  void drain() {
    const int64_t slot = slots.fetch_add(1);
    float* xp = aligned(buffers.data() + slot * buffer_floats);
    for (;;) {
      const int64_t c = next.fetch_add(1);
      if (c >= chunks) return;
      const int64_t q = c % group_chunks, p = c / group_chunks;
      const int64_t b = p / per_ecg, ta = (p % per_ecg) * chunk;
      const int64_t tb = std::min(ta + chunk, s.To);
      const int64_t g0 = q * group_chunk, g1 = std::min(g0 + group_chunk, s.C / W);
      for (int64_t t = ta; t < tb; t += TILE) {
        const int64_t te = std::min<int64_t>(t + TILE, tb);
        if (s.S == 1) {
          run_tile<1>(s, x + b * s.T * s.C, w, bias, y + b * s.To * s.C, t, te, g0, g1, xp);
        } else {
          run_tile<2>(s, x + b * s.T * s.C, w, bias, y + b * s.To * s.C, t, te, g0, g1, xp);
        }
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }

  static float* aligned(float* p) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
  }
};

using Rank3 = ffi::Buffer<ffi::F32, 3>;  // aliases: the binding macro below splits on commas
using Rank1 = ffi::Buffer<ffi::F32, 1>;
using Rank3Out = ffi::ResultBuffer<ffi::F32, 3>;

ffi::Error GroupedConvImpl(ffi::ThreadPool pool, Rank3 x, Rank3 w, Rank1 bias, Rank3Out y,
                           int64_t stride) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  auto work = std::make_shared<Work>();
  Shape& s = work->s;
  s.B = xd[0], s.T = xd[1], s.C = xd[2], s.K = wd[0], s.S = stride;
  if (stride != 1 && stride != 2) return ffi::Error::InvalidArgument("stride must be 1 or 2");
  if (s.C % W || wd[1] != W || wd[2] != s.C || bias.dimensions()[0] != s.C || s.K < 1) {
    return ffi::Error::InvalidArgument("expected x (B, T, 16 G), w (K, 16, 16 G), bias (16 G)");
  }
  s.To = (s.T + s.S - 1) / s.S;
  if (yd[0] != s.B || yd[1] != s.To || yd[2] != s.C) {
    return ffi::Error::InvalidArgument("output shape is not (B, ceil(T / stride), C)");
  }
  if (s.B == 0 || s.To == 0 || s.C == 0) return ffi::Error::Success();
  s.left = std::max<int64_t>((s.To - 1) * s.S + s.K - s.T, 0) / 2;

  work->w = w.typed_data();
  work->x = x.typed_data();
  work->bias = bias.typed_data();
  work->y = y->typed_data();

  const int64_t workers = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t target = 4 * workers, G = s.C / W;
  const int64_t whole = (s.To + R - 1) / R * R;
  if (s.B * s.To >= target * TILE || G == 1) {
    // About 4 chunks per worker (whole register blocks), at most one ECG's positions each.
    const int64_t per_worker = (s.B * s.To + target - 1) / target;
    work->chunk = std::min(whole, std::max<int64_t>(R, (per_worker + R - 1) / R * R));
    work->group_chunk = G;
  } else {
    // Few positions (a short signal, a small batch): each chunk is all of one ECG's positions
    // for a range of groups, so each group's weights are read by one worker.
    work->chunk = whole;
    work->group_chunk = (G + (target + s.B - 1) / s.B - 1) / ((target + s.B - 1) / s.B);
  }
  work->per_ecg = (s.To + work->chunk - 1) / work->chunk;
  work->group_chunks = (G + work->group_chunk - 1) / work->group_chunk;
  work->chunks = s.B * work->per_ecg * work->group_chunks;
  work->buffer_floats = ((TILE + R) * s.S + s.K) * W + 16;
  work->buffers.resize(work->buffer_floats * (workers + 1));

  for (int64_t i = 1; i < workers; ++i) pool.Schedule([work] { work->drain(); });
  work->drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CremaGroupedConv, GroupedConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Rank3>()
                                  .Arg<Rank3>()
                                  .Arg<Rank1>()
                                  .Ret<Rank3>()
                                  .Attr<int64_t>("stride"));
