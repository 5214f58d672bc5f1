// Native CPU kernels of Net1D's inference, as XLA FFI handlers, compiled once per machine by
// crema_jax/runtime/native.py and registered by crema_jax/models/cpu_kernels.py. Each op's
// module says when it runs and holds the XLA formulation it equals:
// - "crema_grouped_conv" (models/grouped_conv.py): the grouped 1-D convolution;
// - "crema_small_dense" (models/small_dense.py): a dense layer (a 1x1 convolution) on a few rows:
//   the squeeze-excite layers, head and middle stages' 1x1 convolutions at batch 1-4.
// Both share their work among the calling thread and XLA's intra-op threads (parallel_for).
//
// Grouped convolution: 16 channels per group, "SAME" padding (left share p // 2), stride 1 or 2,
// channels-last float32.
//
//   x (B, T, C), w (K, 16, C) (XLA's WIO: group g's outputs are channels 16g..16g+15 and read
//   input channels 16g..16g+15), bias (C) -> y (B, ceil(T / S), C)
//   y[b, t, 16g + o] = bias[16g + o] + sum_k sum_i x[b, t S + k - left, 16g + i] w[k, i, 16g + o]
//
// The work: chunks of (ECG, run of output positions, range of groups). A chunk is a run of
// positions of every group where the batch has positions enough for about 4 chunks per worker
// of at least a tile each; otherwise (a short signal, a small batch: Net1D's late stages at
// batch 1) it is all of one ECG's positions for a range of groups, so that each group's weights
// are read by one worker (1.1-1.2x at those shapes, measured). Within a chunk, tiles of TILE
// positions; per tile and group, the group's input rows are copied (zeros outside the signal:
// the padding) into a compact buffer of 64-byte rows, then R output positions at a time are
// accumulated in R 16-lane vectors (one output channel per lane): per tap and input channel one
// weight vector load and R fused multiply-adds whose other operand is an input value broadcast
// from the buffer at a constant offset. Weights are read where they are (a weight vector is
// loaded once per register block; packing them per call measured no faster at batch 64 and
// slower at 1).
//
// Small dense layers: y (M, N) = x (M, K) @ w (K, N) + bias (N), float32.
// - M <= 4 rows (matrix-vector products, memory-bound: each weight is used M times): the rows
//   of w are split among the workers in contiguous runs, each streamed once in order (which the
//   hardware prefetchers follow) into partial sums of all N outputs; the calling thread adds
//   them and the bias. XLA's dot reads such weights on one thread at ~11 GB/s on two Zen 4
//   cores; this reaches ~16-23.
// - More rows, N a multiple of 16: blocks of 64 columns shared among the workers; per block, MR
//   rows at a time accumulate in MR x 4 registers of 16 lanes. The first pass reads the block
//   of w in place, prefetching ahead, and packs it; the later passes read the packed copy. At
//   Net1D's batch-1 shapes with weights of <= 1 MB this ran 1.3-1.7x XLA's dot; with 4 MB
//   weights (1024 x 1024) it was slower (models/small_dense.py routes only the former).
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

// Calls fn(unit, slot) for every unit in [0, units), on the calling thread and on up to
// workers - 1 of XLA's intra-op threads, which take units from a shared counter; slot (below
// workers) names the thread, for per-thread buffers. Returns when every unit is done. A task
// that starts after every unit was taken returns at once (it holds a shared_ptr, so a late
// start never sees freed state, and it never calls fn).
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int64_t units, int64_t workers, Fn fn) {
  struct State {
    explicit State(Fn f) : fn(std::move(f)) {}
    Fn fn;
    int64_t units = 0;
    std::atomic<int64_t> next{0}, done{0}, slots{0};
    void drain() {
      const int64_t slot = slots.fetch_add(1);
      for (;;) {
        const int64_t unit = next.fetch_add(1);
        if (unit >= units) return;
        fn(unit, slot);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>(std::move(fn));
  state->units = units;
  for (int64_t i = 1; i < std::min(workers, units); ++i) pool.Schedule([state] { state->drain(); });
  state->drain();
  while (state->done.load(std::memory_order_acquire) < units) std::this_thread::yield();
}

int64_t workers_of(ffi::ThreadPool& pool) { return std::max<int64_t>(pool.num_threads(), 1); }

float* aligned64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// ---- grouped convolution

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

// Output positions [ta, tb) of one ECG (xb, ob), groups [g0, g1); xp: this worker's buffer.
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

using Rank3 = ffi::Buffer<ffi::F32, 3>;  // aliases: the binding macro below splits on commas
using Rank1 = ffi::Buffer<ffi::F32, 1>;
using Rank3Out = ffi::ResultBuffer<ffi::F32, 3>;

ffi::Error GroupedConvImpl(ffi::ThreadPool pool, Rank3 x, Rank3 w, Rank1 bias, Rank3Out y,
                           int64_t stride) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  Shape s;
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

  const float *xs = x.typed_data(), *ws = w.typed_data(), *bs = bias.typed_data();
  float* ys = y->typed_data();
  const int64_t workers = workers_of(pool);
  const int64_t target = 4 * workers, G = s.C / W;
  const int64_t whole = (s.To + R - 1) / R * R;
  int64_t chunk, group_chunk;
  if (s.B * s.To >= target * TILE || G == 1) {
    // About 4 chunks per worker (whole register blocks), at most one ECG's positions each.
    const int64_t per_worker = (s.B * s.To + target - 1) / target;
    chunk = std::min(whole, std::max<int64_t>(R, (per_worker + R - 1) / R * R));
    group_chunk = G;
  } else {
    // Few positions: all of one ECG's positions for a range of groups.
    chunk = whole;
    const int64_t per_ecg_chunks = (target + s.B - 1) / s.B;
    group_chunk = (G + per_ecg_chunks - 1) / per_ecg_chunks;
  }
  const int64_t per_ecg = (s.To + chunk - 1) / chunk;
  const int64_t group_chunks = (G + group_chunk - 1) / group_chunk;
  const int64_t buffer_floats = ((TILE + R) * s.S + s.K) * W + 16;
  std::vector<float> buffers(buffer_floats * workers);
  float* const buffer0 = buffers.data();
  parallel_for(pool, s.B * per_ecg * group_chunks, workers, [=](int64_t c, int64_t slot) {
    float* xp = aligned64(buffer0 + slot * buffer_floats);
    const int64_t q = c % group_chunks, p = c / group_chunks;
    const int64_t b = p / per_ecg, ta = (p % per_ecg) * chunk;
    const int64_t tb = std::min(ta + chunk, s.To);
    const int64_t g0 = q * group_chunk, g1 = std::min(g0 + group_chunk, G);
    for (int64_t t = ta; t < tb; t += TILE) {
      const int64_t te = std::min<int64_t>(t + TILE, tb);
      if (s.S == 1) {
        run_tile<1>(s, xs + b * s.T * s.C, ws, bs, ys + b * s.To * s.C, t, te, g0, g1, xp);
      } else {
        run_tile<2>(s, xs + b * s.T * s.C, ws, bs, ys + b * s.To * s.C, t, te, g0, g1, xp);
      }
    }
  });
  return ffi::Error::Success();
}

// ---- small dense layers

constexpr int64_t ROWS_MAX = 4;        // the rows path's limit (models/small_dense.py)
constexpr int MR = 6;                  // rows per register block (columns path)
constexpr int NV = 4;                  // 16-lane vectors per column block (columns path)
constexpr int PREFETCH_ROWS = 8;       // how far ahead the first pass prefetches w's rows

// y[0:MB, 0:16 NB] = bias + x[0:MB, :] @ w[:, 0:16 NB], w's rows ldw apart. prefetch: fetch w's
// rows PREFETCH_ROWS ahead (its first reading, from memory); pack: also store the w block read
// there, rows of 16 NB, for the passes over the next rows of x.
template <int MB, int NB>
inline void dense_block(const float* x, int64_t K, const float* w, int64_t ldw,
                        const float* bias, float* y, int64_t N, bool prefetch, float* pack) {
  v16 acc[MB][NB];
  for (int j = 0; j < NB; ++j) {
    const v16 bv = *reinterpret_cast<const v16u*>(bias + 16 * j);
    for (int i = 0; i < MB; ++i) acc[i][j] = bv;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * ldw;
    if (prefetch && k + PREFETCH_ROWS < K) {
      for (int j = 0; j < NB; ++j) __builtin_prefetch(wk + PREFETCH_ROWS * ldw + 16 * j, 0, 2);
    }
    v16 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = *reinterpret_cast<const v16u*>(wk + 16 * j);
    if (pack) {
      for (int j = 0; j < NB; ++j) *reinterpret_cast<v16u*>(pack + k * 16 * NB + 16 * j) = wv[j];
    }
#pragma GCC unroll 8
    for (int i = 0; i < MB; ++i) {
      const float xi = x[i * K + k];
      for (int j = 0; j < NB; ++j) acc[i][j] += wv[j] * xi;
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int j = 0; j < NB; ++j) *reinterpret_cast<v16u*>(y + i * N + 16 * j) = acc[i][j];
  }
}

// Columns [0, 16 NB) of y = x @ w + bias, MR rows at a time: the first pass reads w where it
// is, the others the packed copy (contiguous: no cache-set conflicts between w's rows).
template <int NB>
void dense_columns(const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                   const float* bias, float* y, float* pack) {
  for (int64_t m0 = 0; m0 < M; m0 += MR) {
    const bool first = m0 == 0;
    const float* src = first ? w : pack;
    const int64_t ld = first ? N : 16 * NB;
    float* to_pack = first && M > MR ? pack : nullptr;
    const float* xm = x + m0 * K;
    float* ym = y + m0 * N;
    switch (std::min<int64_t>(MR, M - m0)) {
      case 6: dense_block<6, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
      case 5: dense_block<5, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
      case 4: dense_block<4, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
      case 3: dense_block<3, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
      case 2: dense_block<2, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
      default: dense_block<1, NB>(xm, K, src, ld, bias, ym, N, first, to_pack); break;
    }
  }
}

using Rank2 = ffi::Buffer<ffi::F32, 2>;
using Rank2Out = ffi::ResultBuffer<ffi::F32, 2>;

ffi::Error SmallDenseImpl(ffi::ThreadPool pool, Rank2 x, Rank2 w, Rank1 bias, Rank2Out y) {
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], N = w.dimensions()[1];
  if (w.dimensions()[0] != K || bias.dimensions()[0] != N || y->dimensions()[0] != M ||
      y->dimensions()[1] != N || (M > ROWS_MAX && N % 16)) {
    return ffi::Error::InvalidArgument(
        "expected x (M, K), w (K, N), bias (N), y (M, N), N a multiple of 16 where M > 4");
  }
  const float *xs = x.typed_data(), *ws = w.typed_data(), *bs = bias.typed_data();
  float* ys = y->typed_data();
  if (M == 0 || N == 0) return ffi::Error::Success();
  const int64_t workers = workers_of(pool);
  if (M > ROWS_MAX) {  // columns path: blocks of 16 NV columns
    // Per worker, the packed copy of a block of w (uninitialised: written before it is read;
    // none where one pass of MR rows covers x).
    const int64_t pack_floats = M > MR ? K * 16 * NV : 0;
    std::unique_ptr<float[]> packs(new float[pack_floats * workers + 1]);
    float* const pack0 = packs.get();
    parallel_for(pool, (N + 16 * NV - 1) / (16 * NV), workers, [=](int64_t unit, int64_t slot) {
      const int64_t n0 = unit * 16 * NV;
      float* pack = pack0 + slot * pack_floats;
      switch (std::min<int64_t>(NV, (N - n0) / 16)) {
        case 4: dense_columns<4>(xs, M, K, ws + n0, N, bs + n0, ys + n0, pack); break;
        case 3: dense_columns<3>(xs, M, K, ws + n0, N, bs + n0, ys + n0, pack); break;
        case 2: dense_columns<2>(xs, M, K, ws + n0, N, bs + n0, ys + n0, pack); break;
        default: dense_columns<1>(xs, M, K, ws + n0, N, bs + n0, ys + n0, pack); break;
      }
    });
    return ffi::Error::Success();
  }
  // Rows path: runs of w's rows, about 2 per worker; each run's partial sums (M, N) in its own
  // buffer, added with the bias at the end.
  const int64_t rows_per_run = std::max<int64_t>(1, (K + 2 * workers - 1) / (2 * workers));
  const int64_t runs = std::max<int64_t>(1, (K + rows_per_run - 1) / rows_per_run);
  const int64_t vectors = N / 16;
  std::vector<float> partial(runs * M * N, 0.0f);
  float* const partial0 = partial.data();
  parallel_for(pool, runs, workers, [=](int64_t run, int64_t) {
    float* part = partial0 + run * M * N;
    const int64_t k1 = std::min(K, (run + 1) * rows_per_run);
    for (int64_t k = run * rows_per_run; k < k1; ++k) {
      const float* wk = ws + k * N;
      for (int64_t m = 0; m < M; ++m) {
        const float xm = xs[m * K + k];
        float* acc = part + m * N;
        for (int64_t j = 0; j < vectors; ++j) {
          *reinterpret_cast<v16u*>(acc + 16 * j) += *reinterpret_cast<const v16u*>(wk + 16 * j) * xm;
        }
        for (int64_t n = 16 * vectors; n < N; ++n) acc[n] += wk[n] * xm;
      }
    }
  });
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float sum = bs[n];
      for (int64_t run = 0; run < runs; ++run) sum += partial0[(run * M + m) * N + n];
      ys[m * N + n] = sum;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CremaSmallDense, SmallDenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Rank2>()
                                  .Arg<Rank2>()
                                  .Arg<Rank1>()
                                  .Ret<Rank2>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CremaGroupedConv, GroupedConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Rank3>()
                                  .Arg<Rank3>()
                                  .Arg<Rank1>()
                                  .Ret<Rank3>()
                                  .Attr<int64_t>("stride"));
