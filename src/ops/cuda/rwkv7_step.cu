// RWKV-7's decode step as one persistent kernel (rwkv7_step.h says why and how).
#include "ops/cuda/rwkv7_step.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/rwkv7_math.cuh"

namespace rwkv::cuda {
namespace {

constexpr int kThreads = 512, kWarps = kThreads / 32;
constexpr int kHead = 64;   // the head size the kernel is built for
constexpr float kLayerNormEps = 1e-5f;
constexpr int kMaxBlocks = kRwkv7StepBarrierWords - 32;  // one arrival word each
constexpr int kProfilePhases = 7;  // embedding, the five phases of a layer, the head

struct Params {
  Rwkv7StepModel m;
  Rwkv7StepBuffers b;
  const int* tokens;
  StateRef st;
  int logits;
  int wide;         // floats per row of the staged product input: max(C, F, lg)
  int extra_syncs;  // barriers added after each phase (measuring what one costs)
};

// Shared memory, in floats: the LayerNorm of the batch (MR × C), a product's staged input
// (MR × wide), a head unit's, block-sum scratch. A head unit's: the LoRA slices (kHead rows of
// 16-bit weights: kHead / 2 floats per column), the hiddens, the products, the WKV's vectors.
__host__ __device__ size_t head_unit_floats(const Rwkv7StepModel& m) {
  return size_t(kHead / 2 + 1) * size_t(m.lw + m.la + m.lv) + size_t(9 * kHead + kWarps);
}
size_t shared_bytes(const Rwkv7StepModel& m, int MR) {
  const int wide = std::max({m.C, m.F, m.lg});
  return 4 * (size_t(MR) * size_t(m.C + wide) + head_unit_floats(m) + size_t(MR) * kWarps);
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_relaxed(unsigned* p, unsigned v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// A barrier over the grid; writes before it are seen by reads after it. Each block publishes
// its arrival in its own word (bar[32 + block]); block 0's threads wait for all of them at once
// and publish the barrier's number in bar[0], which the other blocks wait for. Numbers go on
// from step to step (each step starts from bar[0]), so nothing needs resetting. The launch is
// cooperative: every block is resident, so the spinning cannot starve one.
// Every thread fences its own writes as it arrives, so the flags can be relaxed stores: warps
// that finish early fence early, in parallel, where one cumulative release by thread 0 after the
// block's last warp waited ~1.5 µs more per barrier under the weights' traffic (dev/NOTES.md).
// The polls are acquire loads, so the reads after the barrier may be ordinary ones; block 0
// fences once more before its release, which passes on what it acquired from the others.
struct GridBarrier {
  unsigned* bar;
  unsigned epoch;

  __device__ void sync() {
    ++epoch;
    __threadfence();
    __syncthreads();
    if (blockIdx.x == 0) {
      for (unsigned b = threadIdx.x + 1; b < gridDim.x; b += kThreads) {
        while (load_acquire(bar + 32 + b) != epoch) {
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence();  // what block 0 acquired from the others goes out with its release
        store_relaxed(bar, epoch);
      }
    } else if (threadIdx.x == 0) {
      store_relaxed(bar + 32 + blockIdx.x, epoch);
      while (load_acquire(bar) != epoch) {
      }
    }
    __syncthreads();
  }
};

// This block's share [x, y) of n items (contiguous, sizes within one of each other).
__device__ __forceinline__ int2 share_of(int n, int index, int count) {
  return make_int2(int(int64_t(n) * index / count), int(int64_t(n) * (index + 1) / count));
}
__device__ __forceinline__ int2 block_share(int n) { return share_of(n, int(blockIdx.x), int(gridDim.x)); }

__device__ __forceinline__ float* state_of(const Params& p, int m) {
  return p.st.pool + size_t(p.st.slots[m]) * p.st.floats;
}

// v[m] ← its sum over the block, for every thread.
template <int MR>
__device__ void block_sums(float (&v)[MR], float* red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int m = 0; m < MR; ++m) v[m] = warp_sum(v[m]);
  __syncthreads();  // red's previous sums are read
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MR; ++m) red[m * kWarps + warp] = v[m];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    float t = 0.f;
    for (int w = 0; w < kWarps; ++w) t += red[m * kWarps + w];
    v[m] = t;
  }
}

// out (shared, MR × n) = in (MR × n, global or shared). Every load of a thread's round is issued
// before any is used: one memory round trip per 4 × 16 bytes per thread and row, where a plain
// loop waits once per turn (in dev/stream_lab.cu's chain of 96 phases the plain loop cost 15%
// of the time). Rows are 16-byte aligned (n a multiple of 8, buffers checked by rwkv7_step).
template <int MR>
__device__ void load_rows(const float* in, int n, float* out) {
  constexpr int kBatch = MR <= 2 ? 4 : 2;  // registers: MR × kBatch float4
  const int n4 = n / 4;
  for (int i0 = threadIdx.x; i0 < n4; i0 += kBatch * kThreads) {
    float4 v[MR][kBatch];
#pragma unroll
    for (int m = 0; m < MR; ++m) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = i0 + u * kThreads;
        if (i < n4) v[m][u] = reinterpret_cast<const float4*>(in + size_t(m) * n)[i];
      }
    }
#pragma unroll
    for (int m = 0; m < MR; ++m) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = i0 + u * kThreads;
        if (i < n4) reinterpret_cast<float4*>(out + size_t(m) * n)[i] = v[m][u];
      }
    }
  }
}

// out (shared, MR × C) = LayerNorm of the MR rows of `in` (rows of C; global or shared, not out),
// two passes as layer_norm_kernel does, over the rows loaded into out first.
template <int MR>
__device__ void stage_layer_norm(const float* in, int C, const float* w, const float* b, float* out, float* red) {
  __syncthreads();  // out's previous contents are read
  load_rows<MR>(in, C, out);
  __syncthreads();
  float s[MR], q[MR], mean[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    s[m] = 0.f;
    for (int c = threadIdx.x; c < C; c += kThreads) s[m] += out[m * C + c];
  }
  block_sums<MR>(s, red);
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    mean[m] = s[m] / float(C);
    q[m] = 0.f;
    for (int c = threadIdx.x; c < C; c += kThreads) {
      const float d = out[m * C + c] - mean[m];
      q[m] += d * d;
    }
  }
  block_sums<MR>(q, red);
  float inv[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) inv[m] = rsqrtf(q[m] / float(C) + kLayerNormEps);
  for (int c = threadIdx.x; c < C; c += kThreads) {
    const float wc = w[c], bc = b[c];
#pragma unroll
    for (int m = 0; m < MR; ++m) out[m * C + c] = (out[m * C + c] - mean[m]) * inv[m] * wc + bc;
  }
  __syncthreads();
}

// out (shared) = xn + (prev − xn)·mix per row: the token shift's mix, prev being the row the
// state holds at `shift` (the sequence's previous token). Loads batched as in load_rows.
template <int MR>
__device__ void stage_mix(const Params& p, const float* xn, size_t shift, const float* mix, float* out) {
  constexpr int kBatch = 4;
  const int C = p.m.C;
  __syncthreads();  // out's previous contents are read
  for (int c0 = threadIdx.x; c0 < C; c0 += kBatch * kThreads) {
    float prev[MR][kBatch], mv[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int c = c0 + u * kThreads;
      if (c < C) {
        mv[u] = mix[c];
#pragma unroll
        for (int m = 0; m < MR; ++m) prev[m][u] = state_of(p, m)[shift + c];
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int c = c0 + u * kThreads;
      if (c < C) {
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          const float x = xn[m * C + c];
          out[m * C + c] = x + (prev[m][u] - x) * mv[u];
        }
      }
    }
  }
  __syncthreads();
}

// out (shared, MR × n) = in (global, MR × n).
template <int MR>
__device__ void stage_copy(const float* in, int n, float* out) {
  __syncthreads();
  load_rows<MR>(in, n, out);
  __syncthreads();
}

// This block's share of the columns of src (shared, MR × C) into dst (global, MR × C).
template <int MR>
__device__ void write_share(const float* src, float* dst, int C) {
  const int2 s = block_share(C);
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    for (int c = s.x + threadIdx.x; c < s.y; c += kThreads) dst[m * C + c] = src[m * C + c];
  }
}

// Rows [r0, r1) of y (MR × rows) = act(xs · Wᵀ), or y += xs · Wᵀ: W (rows × K) streamed once,
// xs (MR × K) in shared memory. A warp per row; each lane issues all its loads of a stretch of
// the row before using any.
template <typename TW, int MR>
__device__ void gemv_rows(const void* weights, int K, int rows, int r0, int r1, const float* xs, float* y,
                          int act, bool accumulate) {
  constexpr int kUnroll = 8;
  const TW* W = static_cast<const TW*>(weights);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int row = r0 + warp; row < r1; row += kWarps) {
    const TW* w = W + size_t(row) * size_t(K);
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[m] = 0.f;
    for (int k0 = lane * 8; k0 < K; k0 += 256 * kUnroll) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = k0 + 256 * u;
        raw[u] = k < K ? __ldg(reinterpret_cast<const uint4*>(w + k)) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = k0 + 256 * u;
        if (k >= K) break;
        float f[8];
        unpack8(raw[u], w, f);
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          const float4* xp = reinterpret_cast<const float4*>(xs + m * K + k);
          const float4 a = xp[0], b = xp[1];
          acc[m] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y +
                    f[6] * b.z + f[7] * b.w;
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      const float s = warp_sum(acc[m]);
      if (lane == 0) {
        float* out = y + size_t(m) * size_t(rows) + row;
        *out = accumulate ? *out + s : apply_act(s, act);
      }
    }
  }
}

// Phase 1's products, one after another in the rows the blocks share: (matrix, its input's mix,
// output, rows, activation). Returns how many (the value LoRA only after layer 0).
struct Job {
  const void* W;
  const float* mix;
  float* y;
  int rows, act;
};
__device__ int time_mix_jobs(const Params& p, const Rwkv7StepLayer& L, int l, Job* jobs) {
  const int C = p.m.C;
  jobs[0] = {L.receptance, L.x_r, p.b.r, C, 0};
  jobs[1] = {L.key, L.x_k, p.b.k, C, 0};
  jobs[2] = {L.value, L.x_v, p.b.v, C, 0};
  jobs[3] = {L.w1, L.x_w, p.b.hw, p.m.lw, 1};
  jobs[4] = {L.a1, L.x_a, p.b.ha, p.m.la, 0};
  jobs[5] = {L.g1, L.x_g, p.b.hg, p.m.lg, 2};
  jobs[6] = {L.v1, L.x_v, p.b.hv, p.m.lv, 0};
  return l > 0 ? 7 : 6;
}

// Phase 1: ln1, the token shift's six mixes and every product of the time mix's input.
template <typename TW, int MR>
__device__ void time_mix_in(const Params& p, const Rwkv7StepLayer& L, int l, float* norm, float* in, float* red) {
  const int C = p.m.C;
  Job jobs[7];
  const int n = time_mix_jobs(p, L, l, jobs);
  int total = 0;
  for (int j = 0; j < n; ++j) total += jobs[j].rows;
  const int2 share = block_share(total);
  // This block's rows run from job j0 (its row share.x − start0) on.
  int j0 = 0, start0 = 0;
  while (j0 < n && start0 + jobs[j0].rows <= share.x) start0 += jobs[j0++].rows;
  stage_layer_norm<MR>(p.b.x, C, L.ln1_w, L.ln1_b, norm, red);
  write_share<MR>(norm, p.b.xn, C);  // phase 2 moves it into the state
  const float* staged = nullptr;
  for (int j = j0, start = start0; j < n && start < share.y; start += jobs[j].rows, ++j) {
    const int r0 = max(share.x, start) - start, r1 = min(share.y, start + jobs[j].rows) - start;
    if (staged != jobs[j].mix) {
      stage_mix<MR>(p, norm, size_t(l) * p.m.layer_floats, jobs[j].mix, in);
      staged = jobs[j].mix;
    }
    gemv_rows<TW, MR>(jobs[j].W, C, jobs[j].rows, r0, r1, in, jobs[j].y, jobs[j].act, false);
  }
}

__device__ __forceinline__ void copy_async16(void* shared, const void* global) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(global) : "memory");
}

// Phase 2, one (sequence m, head h): the decay / in-context-rate / value LoRAs' second products
// for the head's channels, the preparation of rwkv7_prepare_kernel and the state update of
// wkv7_step_kernel; y is the WKV's raw output. Warp w owns state rows 4w … 4w + 3. Everything the
// unit reads is requested at once first — the LoRA slices (rows h·N … h·N + N − 1, contiguous)
// copied into shared memory asynchronously, the state rows and phase 1's outputs into
// registers — so the unit waits for memory about once.
template <typename TW, int MR>
__device__ void head_unit(const Params& p, const Rwkv7StepLayer& L, int l, int m, int h, float* hs) {
  constexpr int N = kHead, kRows = N / kWarps, kCols = N / 32;
  const int C = p.m.C, lw = p.m.lw, la = p.m.la, lv = p.m.lv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const bool residual = l > 0;
  // Shared: the three slices (N × width each, weight type), the LoRA hiddens, their products,
  // the WKV's vectors.
  TW* const slice_w = reinterpret_cast<TW*>(hs);
  TW* const slice_a = slice_w + N * lw;
  TW* const slice_v = slice_a + N * la;
  float* const hw = hs + 32 * (lw + la + lv);
  float *ha = hw + lw, *hv = ha + la, *lora = hv + lv;
  float *rs = lora + 3 * N, *ds = rs + N, *ks = ds + N, *as = ks + N, *bs = as + N, *vs = bs + N, *red = vs + N;
  __syncthreads();  // hs is free (a previous unit of this block)
  const auto copy_slice = [&](TW* dst, const void* W, int K) {
    const TW* src = static_cast<const TW*>(W) + size_t(h) * N * K;
    for (int e = tid * 8; e < N * K; e += kThreads * 8) copy_async16(dst + e, src + e);
  };
  copy_slice(slice_w, L.w2, lw);
  copy_slice(slice_a, L.a2, la);
  if (residual) copy_slice(slice_v, L.v2, lv);
  asm volatile("cp.async.commit_group;" ::: "memory");
  float* const state = state_of(p, m) + size_t(l) * p.m.layer_floats;
  float* const S = state + C + size_t(h) * N * N + size_t(warp) * kRows * N + lane;
  float s[kRows][kCols];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) s[q][c] = S[q * N + 32 * c];
  }
  const int i = tid, c = h * N + (i < N ? i : 0);
  const size_t j = size_t(m) * size_t(C) + size_t(c);
  float kj = 0.f, vj = 0.f, rj = 0.f, xnj = 0.f, vfirst = 0.f, k_k = 0.f, k_a = 0.f, w0 = 0.f, a0 = 0.f, v0 = 0.f;
  if (i < N) {
    kj = p.b.k[j], vj = p.b.v[j], rj = p.b.r[j], xnj = p.b.xn[j];
    k_k = L.k_k[c], k_a = L.k_a[c], w0 = L.w0[c], a0 = L.a0[c];
    if (residual) vfirst = p.b.v_first[j], v0 = L.v0[c];
  }
  const float hwi = tid < lw ? p.b.hw[m * lw + tid] : 0.f, hai = tid < la ? p.b.ha[m * la + tid] : 0.f;
  const float hvi = residual && tid < lv ? p.b.hv[m * lv + tid] : 0.f;
  if (tid < lw) hw[tid] = hwi;
  if (tid < la) ha[tid] = hai;
  if (residual && tid < lv) hv[tid] = hvi;
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
  // Dot d (LoRA d / N, channel d % N) by warp d mod 16, lanes over 8 columns at a time.
  for (int d = warp; d < (residual ? 3 : 2) * N; d += kWarps) {
    const int which = d / N, K = which == 0 ? lw : which == 1 ? la : lv;
    const TW* row = (which == 0 ? slice_w : which == 1 ? slice_a : slice_v) + (d % N) * K;
    const float* x = which == 0 ? hw : which == 1 ? ha : hv;
    float acc = 0.f;
    for (int k = lane * 8; k < K; k += 256) {
      float f[8];
      unpack8(*reinterpret_cast<const uint4*>(row + k), row, f);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += f[e] * x[k + e];
    }
    acc = warp_sum(acc);
    if (lane == 0) lora[d] = acc;
  }
  const float kk = kj * k_k;
  if (warp < N / 32) {
    const float t = warp_sum(kk * kk);
    if (lane == 0) red[warp] = t;
  }
  __syncthreads();
  if (i < N) {
    float norm2 = 0.f;
    for (int w = 0; w < N / 32; ++w) norm2 += red[w];
    const float kh = kk / fmaxf(sqrtf(norm2), 1e-12f);
    float v = vj;
    if (residual) {
      v = rwkv7_value(v, vfirst, v0 + lora[2 * N + i]);
    } else {
      p.b.v_first[j] = v;
    }
    const Rwkv7Channel ch = rwkv7_channel(kj, kh, w0 + lora[i], a0 + lora[N + i], k_a);
    rs[i] = rj;
    ds[i] = expf(ch.w);
    ks[i] = ch.k;
    as[i] = ch.a;
    bs[i] = ch.b;
    vs[i] = v;
    p.b.k[j] = ch.k;  // phase 3's bonus term reads the prepared k and v
    p.b.v[j] = v;
    state[c] = xnj;  // the time mix's token shift: phase 1 has read the previous row
  }
  __syncthreads();
  // S ← S·diag(d) + (S·a)·bᵀ + v·kᵀ;  y = S·r
  float sa[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    sa[q] = 0.f;
#pragma unroll
    for (int c2 = 0; c2 < kCols; ++c2) sa[q] += s[q][c2] * as[lane + 32 * c2];
    sa[q] = warp_sum(sa[q]);
  }
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    const int row = warp * kRows + q;
    float yv = 0.f;
#pragma unroll
    for (int c2 = 0; c2 < kCols; ++c2) {
      const int col = lane + 32 * c2;
      s[q][c2] = s[q][c2] * ds[col] + sa[q] * bs[col] + vs[row] * ks[col];
      yv += s[q][c2] * rs[col];
      S[q * N + 32 * c2] = s[q][c2];
    }
    yv = warp_sum(yv);
    if (lane == 0) p.b.y[size_t(m) * size_t(C) + size_t(h * N + row)] = yv;
  }
}

// Phase 2: every (sequence, head) unit, then the gate's second product over the blocks' shares.
template <typename TW, int MR>
__device__ void wkv_heads(const Params& p, const Rwkv7StepLayer& L, int l, float* in, float* hs) {
  const int H = p.m.H, C = p.m.C, lg = p.m.lg, units = MR * H;
  for (int u = blockIdx.x; u < units; u += gridDim.x) head_unit<TW, MR>(p, L, l, u / H, u % H, hs);
  // The gate's rows go to the blocks without a head unit when there are any.
  const int spare = int(gridDim.x) - units, index = int(blockIdx.x) - units;
  const int2 share = spare > 0 ? (index >= 0 ? share_of(C, index, spare) : make_int2(0, 0)) : block_share(C);
  if (share.x >= share.y) return;
  stage_copy<MR>(p.b.hg, lg, in);
  gemv_rows<TW, MR>(L.g2, lg, C, share.x, share.y, in, p.b.g, 0, false);
}

// Phase 3: the WKV's output (GroupNorm per head, the bonus, the gate; rwkv7_output_kernel's
// math) staged by every block, then the output projection added to the residual.
template <typename TW, int MR>
__device__ void time_mix_out(const Params& p, const Rwkv7StepLayer& L, float* in) {
  constexpr int N = kHead, kCols = N / 32;
  const int C = p.m.C, H = p.m.H, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int2 share = block_share(C);
  if (share.x >= share.y) return;
  __syncthreads();  // in is free
  for (int pair = warp; pair < MR * H; pair += kWarps) {
    const int m = pair / H, h = pair % H;
    float y[kCols], sum = 0.f, bonus = 0.f;
#pragma unroll
    for (int q = 0; q < kCols; ++q) {
      const int c = h * N + lane + 32 * q;
      const size_t j = size_t(m) * size_t(C) + size_t(c);
      y[q] = p.b.y[j];
      sum += y[q];
      bonus += p.b.r[j] * p.b.k[j] * L.r_k[c];
    }
    const float mean = warp_sum(sum) / float(N);
    float var = 0.f;
#pragma unroll
    for (int q = 0; q < kCols; ++q) var += (y[q] - mean) * (y[q] - mean);
    const float inv = rsqrtf(warp_sum(var) / float(N) + p.m.group_norm_eps);
    bonus = warp_sum(bonus);
#pragma unroll
    for (int q = 0; q < kCols; ++q) {
      const int c = h * N + lane + 32 * q;
      const size_t j = size_t(m) * size_t(C) + size_t(c);
      in[m * C + c] = ((y[q] - mean) * inv * L.ln_x_w[c] + L.ln_x_b[c] + bonus * p.b.v[j]) * p.b.g[j];
    }
  }
  __syncthreads();
  gemv_rows<TW, MR>(L.output, C, C, share.x, share.y, in, p.b.x, 0, true);
}

// Phase 4: ln2, the channel mix's token shift and mix, the key projection with ReLU².
template <typename TW, int MR>
__device__ void channel_mix_in(const Params& p, const Rwkv7StepLayer& L, int l, float* norm, float* in, float* red) {
  const int C = p.m.C, F = p.m.F;
  const int2 share = block_share(F);
  stage_layer_norm<MR>(p.b.x, C, L.ln2_w, L.ln2_b, norm, red);
  write_share<MR>(norm, p.b.xn, C);  // phase 5 moves it into the state
  if (share.x >= share.y) return;
  stage_mix<MR>(p, norm, size_t(l + 1) * p.m.layer_floats - size_t(C), L.ffn_x_k, in);
  gemv_rows<TW, MR>(L.ffn_key, C, F, share.x, share.y, in, p.b.hidden, 3, false);
}

// Phase 5: the channel mix's token shift moves into the state (phase 4 has read the previous
// row); the value projection is added to the residual.
template <typename TW, int MR>
__device__ void channel_mix_out(const Params& p, const Rwkv7StepLayer& L, int l, float* in) {
  const int C = p.m.C, F = p.m.F;
  const int2 share = block_share(C);
  if (share.x >= share.y) return;
  const size_t shift = size_t(l + 1) * p.m.layer_floats - size_t(C);
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    float* dst = state_of(p, m) + shift;
    for (int c = share.x + threadIdx.x; c < share.y; c += kThreads) dst[c] = p.b.xn[m * C + c];
  }
  stage_copy<MR>(p.b.hidden, F, in);
  gemv_rows<TW, MR>(L.ffn_value, F, C, share.x, share.y, in, p.b.x, 0, true);
}

template <typename TW, int MR>
__global__ void __launch_bounds__(kThreads, 1) rwkv7_step_kernel(const __grid_constant__ Params p) {
  extern __shared__ float4 smem4[];
  const Rwkv7StepModel& m = p.m;
  float* norm = reinterpret_cast<float*>(smem4);
  float* in = norm + MR * m.C;
  float* hs = in + MR * p.wide;
  float* red = hs + head_unit_floats(m);
  // RWKV_CUDA_STEP_PROFILE: block 0 adds each phase's time (to its barrier) to p.b.profile.
  unsigned long long t0 = 0;
  const bool timer = p.b.profile && blockIdx.x == 0 && threadIdx.x == 0;
  const auto mark = [&](int phase) {
    if (!timer) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (phase >= 0) p.b.profile[phase] += t - t0;
    t0 = t;
  };
  mark(-1);
  // x = ln0(emb[token]).
  const TW* emb = static_cast<const TW*>(m.emb);
  for (int r = 0; r < MR; ++r) {
    const TW* row = emb + size_t(p.tokens[r]) * size_t(m.C);
    for (int c = threadIdx.x; c < m.C; c += kThreads) in[r * m.C + c] = to_float(row[c]);
  }
  __syncthreads();
  stage_layer_norm<MR>(in, m.C, m.ln0_w, m.ln0_b, norm, red);
  write_share<MR>(norm, p.b.x, m.C);
  GridBarrier barrier{p.b.barrier, load_acquire(p.b.barrier)};
  const auto end_phase = [&](int phase) {
    barrier.sync();
    for (int e = 0; e < p.extra_syncs; ++e) barrier.sync();
    mark(phase);
  };
  end_phase(0);
  for (int l = 0; l < m.n_layer; ++l) {
    const Rwkv7StepLayer& L = m.layers[l];
    time_mix_in<TW, MR>(p, L, l, norm, in, red);
    end_phase(1);
    wkv_heads<TW, MR>(p, L, l, in, hs);
    end_phase(2);
    time_mix_out<TW, MR>(p, L, in);
    end_phase(3);
    channel_mix_in<TW, MR>(p, L, l, norm, in, red);
    end_phase(4);
    channel_mix_out<TW, MR>(p, L, l, in);
    end_phase(5);
  }
  if (p.logits) {
    const int2 share = block_share(m.V);
    if (share.x < share.y) {
      stage_layer_norm<MR>(p.b.x, m.C, m.ln_out_w, m.ln_out_b, norm, red);
      gemv_rows<TW, MR>(m.head, m.C, m.V, share.x, share.y, norm, p.b.logits, 0, false);
    }
  }
  mark(6);
  if (timer) p.b.profile[kProfilePhases] += 1;
}

template <typename TW, int MR>
void launch(Context& ctx, const Params& p, size_t smem) {
  const auto kernel = rwkv7_step_kernel<TW, MR>;
  // Once per device and shared-memory size, not per launch: steps launched one by one (no CUDA
  // graph) would pay the attribute call and the occupancy query every time.
  static thread_local int ready_device = -1;
  static thread_local size_t ready_smem = 0;
  if (ready_device != ctx.device || ready_smem != smem) {
    RWKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int per_sm = 0;
    RWKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
    if (per_sm < 1) fail("CUDA rwkv7_step: the kernel does not fit on an SM with ", smem, " bytes of shared memory");
    ready_device = ctx.device, ready_smem = smem;
  }
  const int sms = std::min(ctx.sms, kMaxBlocks);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(sms));  // one block per SM, all resident (cooperative launch)
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = ctx.stream;
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  RWKV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
  RWKV_CUDA_LAUNCHED("rwkv7_step");
}

template <typename TW>
void launch_batch(Context& ctx, const Params& p, size_t smem, int B) {
  switch (B) {
    case 1: return launch<TW, 1>(ctx, p, smem);
    case 2: return launch<TW, 2>(ctx, p, smem);
    case 3: return launch<TW, 3>(ctx, p, smem);
    case 4: return launch<TW, 4>(ctx, p, smem);
    default: fail("CUDA rwkv7_step: batch ", B, " is not 1 … 4");
  }
}

}  // namespace

int rwkv7_step_max_batch(Context& ctx, const Rwkv7StepModel& m) {
  if (m.dtype != DType::BF16 && m.dtype != DType::F16) return 0;
  if (m.N != kHead || m.C != m.H * m.N || m.n_layer < 1 || m.V < 1) return 0;
  for (int width : {m.C, m.F, m.lw, m.la, m.lg}) {
    if (width <= 0 || width % 8 != 0) return 0;
  }
  if (m.lv < 0 || m.lv % 8 != 0 || (m.n_layer > 1 && m.lv == 0)) return 0;
  if (std::max({m.lw, m.la, m.lv}) > kThreads) return 0;  // a head unit loads a hidden per thread
  int optin = 0;
  RWKV_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device));
  for (int B = 4; B >= 1; --B) {
    if (shared_bytes(m, B) <= size_t(optin)) return B;
  }
  return 0;
}

// RWKV_CUDA_STEP_EXTRA_SYNCS: barriers added after each phase (what one costs, side by side).
namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
}  // namespace

void rwkv7_step(Context& ctx, const Rwkv7StepModel& m, const Rwkv7StepBuffers& buf, const int* tokens,
                int B, StateRef states, bool logits) {
  static const int extra_syncs = env_int("RWKV_CUDA_STEP_EXTRA_SYNCS", 0);
  const Params p{m,           buf, tokens, states, logits ? 1 : 0, std::max({m.C, m.F, m.lg}), extra_syncs};
  for (const float* staged : {buf.x, buf.hidden, buf.hg}) {  // load_rows reads them 16 bytes at a time
    if (reinterpret_cast<uintptr_t>(staged) % 16 != 0) fail("CUDA rwkv7_step: an activation buffer is not 16-byte aligned");
  }
  const size_t smem = shared_bytes(m, B);
  if (m.dtype == DType::BF16) return launch_batch<__nv_bfloat16>(ctx, p, smem, B);
  if (m.dtype == DType::F16) return launch_batch<__half>(ctx, p, smem, B);
  fail("CUDA rwkv7_step: weights of type ", dtype_name(m.dtype), " are not supported");
}

}  // namespace rwkv::cuda
