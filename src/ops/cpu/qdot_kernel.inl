// The quantized dot-product kernel (ops/qdot.h), written once over 256-bit x86 vectors and
// included by qdot_x86.cpp once per instruction set, inside that set's namespace and target
// pragma. RWKV_QDOT_VNNI picks the 32-element integer dot: vpdpbusd (AVX-512 VNNI, EVEX-encoded
// 256-bit) or vpmaddubsw + vpmaddwd (AVX2); their results are equal (no saturation is reachable:
// |q_w| ≤ 128 unsigned or ≤ 31, |x̂| ≤ 127, so a pair sums to at most 32512).
//
// Needs, from the includer: <immintrin.h>, <cstring>, <algorithm>, ops::Matrix,
// ops::QuantizedVectors; F below is a block format's constants (quant::Format in core/quant.h).

#define RWKV_INLINE inline __attribute__((always_inline))

// acc + the sums of four adjacent u8·s8 products, per 32-bit lane.
RWKV_INLINE __m256i DotBytes(__m256i acc, __m256i u, __m256i s) {
#if RWKV_QDOT_VNNI
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  const __m256i pairs = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

// acc + the products of two pairs (u0, s0), (u1, s1) of 4-bit unsigned and 8-bit signed bytes.
// AVX2 adds the two 16-bit pair sums before widening (each ≤ 2·15·127, so no overflow).
RWKV_INLINE __m256i DotNibbles2(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1) {
#if RWKV_QDOT_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, u0, s0), u1, s1);
#else
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

// The fp16 value at p (any alignment) in every lane.
RWKV_INLINE __m256 BroadcastHalf(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(short(bits)));
}

// Byte j = 16 where bit j of the u32 at p is set (the fifth bits of a 5-bit block), else 0.
RWKV_INLINE __m256i FifthBits(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  // Byte j takes byte j/8 of the word (the shuffle works within each 128-bit half, and the
  // word is in every 32-bit lane), then tests bit j%8.
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(bits)),
      _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(16));
}

// The 32 quants of a ggml 4/5-bit block, unsigned: element j < 16 is the low nibble of byte j,
// element j + 16 its high nibble. One 16-byte load fills both halves, the upper one shifted.
template <class F>
RWKV_INLINE __m256i GgmlQuants(const uint8_t* blk) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + F::kQs)));
  __m256i q = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
  if constexpr (F::kBits == 5) q = _mm256_or_si256(q, FifthBits(blk + F::kQh));
  return q;
}

RWKV_INLINE __m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

RWKV_INLINE float SumLanes(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Bytes ahead that each row stream prefetches.
constexpr size_t kPrefetchBytes = 3072;

// Σ_j q_j·x̂_j over one block (F::kGroup elements) for M inputs (x[m] at the block's first
// input), each added to isum[m].
template <class F, int M>
RWKV_INLINE void BlockDots(const uint8_t* blk, const int8_t* const* x, __m256i* isum) {
  if constexpr (F::kBits == 8) {
    for (int s = 0; s < F::kGroup / 32; ++s) {
      // Signed weights: |q| goes in the unsigned operand, q's sign onto x̂.
      const __m256i q = Load32(blk + F::kQs + 32 * s);
      const __m256i u = _mm256_abs_epi8(q);
      for (int m = 0; m < M; ++m) isum[m] = DotBytes(isum[m], u, _mm256_sign_epi8(Load32(x[m] + 32 * s), q));
    }
  } else if constexpr (F::kGroup > 32) {
    // Q4_G: 32 bytes hold elements c..c+31 (low nibbles) and c+32..c+63 (high nibbles).
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (int c = 0; c < F::kGroup; c += 64) {
      const __m256i v = Load32(blk + F::kQs + c / 2);
      const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      for (int m = 0; m < M; ++m) isum[m] = DotNibbles2(isum[m], lo, Load32(x[m] + c), hi, Load32(x[m] + c + 32));
    }
  } else {
    const __m256i q = GgmlQuants<F>(blk);
    for (int m = 0; m < M; ++m) isum[m] = DotBytes(isum[m], q, Load32(x[m]));
  }
}

// Dot products of R weight rows (w[r], n_groups blocks each) with inputs m0..m0+M−1 of x:
// out[r·M + m]. For one (row, input) pair the operations and their order are the same whatever
// R and M are.
template <class F, int R, int M>
RWKV_INLINE void Dots(const uint8_t* const* w, size_t n_groups, const QuantizedVectors& x, int m0,
                      float* out) {
  __m256 acc[R * M];
  for (int i = 0; i < R * M; ++i) acc[i] = _mm256_setzero_ps();
  for (size_t g = 0; g < n_groups; ++g) {
    const int8_t* xg[M];
    __m256i start[M];
    __m256 dx[M], min_share[M];
    for (int m = 0; m < M; ++m) {
      const size_t i = size_t(m0 + m) * n_groups + g;
      xg[m] = x.vector(m0 + m) + g * F::kGroup;
      dx[m] = _mm256_set1_ps(x.scale[i]);
      // −bias·Σ x̂ spread over the 8 lanes (bias is 8 or 16): the block's dot starts from it.
      start[m] = _mm256_set1_epi32(-(F::kBias / 8) * x.sum[i]);
      // m_w·d_x·Σ x̂ likewise: each lane adds m_w times an eighth (exact) of d_x·Σ x̂.
      if constexpr (F::kMin != 0) min_share[m] = _mm256_set1_ps(x.scale[i] * float(x.sum[i]) * 0.125f);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w[r] + g * F::kBytes;
      for (int p = 0; p < F::kBytes; p += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes + p, _MM_HINT_T0);
      }
      __m256i isum[M];
      for (int m = 0; m < M; ++m) isum[m] = start[m];
      BlockDots<F, M>(blk, xg, isum);
      const __m256 d = BroadcastHalf(blk);
      for (int m = 0; m < M; ++m) {
        __m256& a = acc[r * M + m];
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, dx[m]), a);
        if constexpr (F::kMin != 0) a = _mm256_fmadd_ps(BroadcastHalf(blk + F::kMin), min_share[m], a);
      }
    }
  }
  for (int i = 0; i < R * M; ++i) out[i] = SumLanes(acc[i]);
}

// Rows read at once by one thread with one input vector (several DRAM streams, as the fp32-input
// kernels do).
constexpr int kStreams = 4;

// Rows [r0, r1) of y[m][o] for M ≤ 4 inputs. One input reads kStreams distant rows at once: the
// rows split into kStreams slices, and stream k starts k rows into its slice (wrapping to the
// slice's start at its end). Exactly a slice apart (for q8_g64 at 2048–8192 columns a multiple
// of 64 KiB) the streams ran at half the rate from DRAM, likely conflicting in DRAM banks or
// cache sets; one row of offset each restored it (bench_ops MatVecDecode/cols_q8g64).
template <class F, int M>
void RowsM(const uint8_t* w_all, size_t row_bytes, size_t n_groups, const QuantizedVectors& x,
           int m0, float* y, int rows, int r0, int r1) {
  int first = r0;
  if constexpr (M == 1) {
    const int slice = (r1 - r0) / kStreams;
    for (int i = 0; i < slice; ++i) {
      const uint8_t* w[kStreams];
      float out[kStreams];
      int row[kStreams];
      for (int k = 0; k < kStreams; ++k) {
        row[k] = r0 + k * slice + (i + k) % slice;
        w[k] = w_all + size_t(row[k]) * row_bytes;
      }
      Dots<F, kStreams, 1>(w, n_groups, x, m0, out);
      for (int k = 0; k < kStreams; ++k) y[row[k]] = out[k];
    }
    first = r0 + kStreams * slice;
  }
  for (int o = first; o < r1; ++o) {
    const uint8_t* w = w_all + size_t(o) * row_bytes;
    float out[M];
    Dots<F, 1, M>(&w, n_groups, x, m0, out);
    for (int m = 0; m < M; ++m) y[size_t(m) * size_t(rows) + size_t(o)] = out[m];
  }
}

template <class F>
void Rows(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1) {
  const auto* w = static_cast<const uint8_t*>(W.data);
  const size_t n_groups = size_t(W.cols) / F::kGroup, rb = W.row_bytes();
  for (int m = 0; m < x.count; m += 4) {
    float* ym = y + size_t(m) * size_t(W.rows);
    switch (std::min(4, x.count - m)) {
      case 1: RowsM<F, 1>(w, rb, n_groups, x, m, ym, W.rows, r0, r1); break;
      case 2: RowsM<F, 2>(w, rb, n_groups, x, m, ym, W.rows, r0, r1); break;
      case 3: RowsM<F, 3>(w, rb, n_groups, x, m, ym, W.rows, r0, r1); break;
      default: RowsM<F, 4>(w, rb, n_groups, x, m, ym, W.rows, r0, r1);
    }
  }
}

// 4-bit panels (layout in ops/qdot.h): the dot products of S panels' 8 rows with inputs
// m0..m0+M−1, lane r of acc[s·M + m] for row r of panel s. Per 32-byte chunk (8 rows × 8 columns)
// the two nibble halves meet the input's 4-byte runs broadcast to every lane. AVX2 adds 8 such
// 16-bit pair sums (32 columns) before widening: each is at most 2·15·127, so 8 stay below 2^15.
// The operations on one (row, input) pair do not depend on S or M.
template <class F, int S, int M>
RWKV_INLINE void PanelDots(const uint8_t* const* panel, size_t n_groups, const QuantizedVectors& x,
                           int m0, __m256* acc) {
  static_assert(F::kBits == 4 && F::kBias == 8 && F::kMin == 0);
  const PanelLayout L{n_groups, F::kGroup};
  constexpr int kChunks = F::kGroup / 8, kQuantBytes = 4 * F::kGroup;
  const __m256i low = _mm256_set1_epi8(0x0f);
  for (int i = 0; i < S * M; ++i) acc[i] = _mm256_setzero_ps();
  for (size_t g = 0; g < n_groups; ++g) {
    const uint8_t *pq[S], *pd[S];
    for (int s = 0; s < S; ++s) {
      pq[s] = panel[s] + L.quants(g);
      pd[s] = panel[s] + L.scales(g);
      for (int p = 0; p <= kQuantBytes; p += 64) {  // one line more: a set's line of scales
        _mm_prefetch(reinterpret_cast<const char*>(pq[s]) + kPrefetchBytes + p, _MM_HINT_T0);
      }
    }
    const int8_t* xg[M];
    __m256 dx[M];
    __m256i start[M];
    for (int m = 0; m < M; ++m) {
      xg[m] = x.vector(m0 + m) + g * F::kGroup;
      dx[m] = _mm256_set1_ps(x.scale[size_t(m0 + m) * n_groups + g]);
      start[m] = _mm256_set1_epi32(-8 * x.sum[size_t(m0 + m) * n_groups + g]);
    }
    // One panel at a time: its sums and one chunk's nibbles are all that is live (the inputs'
    // broadcasts are loads), so S panels need no more registers than one.
    for (int s = 0; s < S; ++s) {
      __m256i isum[M];
      for (int m = 0; m < M; ++m) isum[m] = start[m];
      for (int k0 = 0; k0 < kChunks; k0 += 4) {
#if !RWKV_QDOT_VNNI
        __m256i pairs[M];
        for (int m = 0; m < M; ++m) pairs[m] = _mm256_setzero_si256();
#endif
        for (int k = k0; k < k0 + 4; ++k) {
          const __m256i v = Load32(pq[s] + 32 * k);
          const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
          for (int m = 0; m < M; ++m) {
            int32_t a, b;
            std::memcpy(&a, xg[m] + 8 * k, 4);
            std::memcpy(&b, xg[m] + 8 * k + 4, 4);
            const __m256i xa = _mm256_set1_epi32(a), xb = _mm256_set1_epi32(b);
#if RWKV_QDOT_VNNI
            isum[m] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(isum[m], lo, xa), hi, xb);
#else
            pairs[m] = _mm256_add_epi16(pairs[m], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa),
                                                                   _mm256_maddubs_epi16(hi, xb)));
#endif
          }
        }
#if !RWKV_QDOT_VNNI
        for (int m = 0; m < M; ++m) {
          isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(pairs[m], _mm256_set1_epi16(1)));
        }
#endif
      }
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pd[s])));
      for (int m = 0; m < M; ++m) {
        acc[s * M + m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(dw, dx[m]), acc[s * M + m]);
      }
    }
  }
}

// Stores rows [r0, r1) ∩ panel p of y[m0 + m][·] from acc[m].
template <int M>
RWKV_INLINE void StorePanel(const __m256* acc, int p, int m0, float* y, int rows, int r0, int r1) {
  const int lo = std::max(r0, 8 * p), hi = std::min(r1, 8 * p + 8);
  for (int m = 0; m < M; ++m) {
    float* ym = y + size_t(m0 + m) * size_t(rows);
    if (hi - lo == 8) {
      _mm256_storeu_ps(ym + 8 * p, acc[m]);
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[m]);
      std::copy(lanes + (lo - 8 * p), lanes + (hi - 8 * p), ym + lo);
    }
  }
}

// Panels read at once by one thread with one input (more DRAM streams in flight).
constexpr int kPanelStreams = 2;

// Rows [r0, r1) of y[m][o] from a panel matrix, for inputs m0..m0+M−1: whole panels are computed
// and only the rows inside the range stored, so any range gives the same values. One input reads
// kPanelStreams slices of the panels at once, each stream starting one panel further into its
// slice (and wrapping), for the reason RowsM gives.
template <class F, int M>
void PanelRowsM(const Matrix& W, const QuantizedVectors& x, int m0, float* y, int r0, int r1) {
  const size_t n_groups = size_t(W.cols) / F::kGroup, panel_bytes = panel_layout(W).panel_bytes();
  const auto* base = static_cast<const uint8_t*>(W.data);
  const int p0 = r0 / 8, p1 = (r1 + 7) / 8;
  int first = p0;
  if constexpr (M == 1) {
    constexpr int S = kPanelStreams;
    const int slice = (p1 - p0) / S;
    for (int i = 0; i < slice; ++i) {
      const uint8_t* panel[S];
      int at[S];
      for (int s = 0; s < S; ++s) {
        at[s] = p0 + s * slice + (i + s) % slice;
        panel[s] = base + size_t(at[s]) * panel_bytes;
      }
      __m256 acc[S];
      PanelDots<F, S, 1>(panel, n_groups, x, m0, acc);
      for (int s = 0; s < S; ++s) StorePanel<1>(acc + s, at[s], m0, y, W.rows, r0, r1);
    }
    first = p0 + S * slice;
  }
  for (int p = first; p < p1; ++p) {
    const uint8_t* panel = base + size_t(p) * panel_bytes;
    __m256 acc[M];
    PanelDots<F, 1, M>(&panel, n_groups, x, m0, acc);
    StorePanel<M>(acc, p, m0, y, W.rows, r0, r1);
  }
}

// Two inputs at a time: with their 16-bit, integer and float sums, the broadcasts and one chunk's
// nibbles, more would spill.
template <class F>
void PanelRows(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1) {
  for (int m = 0; m < x.count; m += 2) {
    if (x.count - m == 1) {
      PanelRowsM<F, 1>(W, x, m, y, r0, r1);
    } else {
      PanelRowsM<F, 2>(W, x, m, y, r0, r1);
    }
  }
}

#undef RWKV_INLINE
