// WKV-7 in its chunked form (spec §4.5: generalised delta rule, WY representation) and that
// form's backward, derived here by reverse mode through its matrix expressions: the plain-loop
// reference of the chunked GPU kernels to come, checked against the sequential form. Per chunk of
// Lc rows, with λ the log-decays, G = cumsum λ, Ĝ = G − λ, ER = R⊙e^G, EA = A⊙e^Ĝ, EK = K⊙e^−G,
// EB = B⊙e^−G (factorised as in fla; |λ| < 0.61 keeps e^−G finite for Lc ≤ 64):
//   A_rk = tril(ER EKᵀ), A_rb = tril(ER EBᵀ), A_ak = stril(EA EKᵀ), A_ab = stril(EA EBᵀ)
//   Γ = (I − A_ab)⁻¹, U = Γ A_ak V, W = Γ EA, SA = U + W S₀ᵀ
//   Y = A_rk V + A_rb SA + ER S₀ᵀ
//   S_next = S₀ diag(e^{G_L}) + Vᵀ (K⊙F) + SAᵀ (B⊙F),  F = e^{G_L − G}
// The chunks are independent but for S₀, which enters linearly: S_next = S₀ M + C with
// M = diag(e^{G_L}) + Wᵀ(B⊙F) and C = Vᵀ(K⊙F) + Uᵀ(B⊙F), and the backward's
// ∂S₀ = ∂S_next Mᵀ + ∂Yᵀ(A_rb W + ER). So both passes run as the GPU kernels will: every chunk's
// matrices at once, then a scan over chunks of N×N products (states forward, state gradients
// backward), then every chunk's outputs (or gradients) at once.
// Internally in double whatever R is.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/train.h"
#include "rwkv/error.h"

namespace rwkv::ops::train {
namespace {

// A dense row-major matrix.
struct Mat {
  int rows = 0, cols = 0;
  std::vector<double> v;
  Mat() = default;
  Mat(int r, int c) : rows(r), cols(c), v(size_t(r) * size_t(c), 0.0) {}
  double& operator()(int i, int j) { return v[size_t(i) * cols + j]; }
  double operator()(int i, int j) const { return v[size_t(i) * cols + j]; }
};

// C (+)= op(A)·op(B); ta/tb transpose A/B.
void mul(const Mat& A, bool ta, const Mat& B, bool tb, Mat& C, bool acc = false) {
  const int M = ta ? A.cols : A.rows, K = ta ? A.rows : A.cols, N = tb ? B.rows : B.cols;
  if ((tb ? B.cols : B.rows) != K) fail("wkv7 chunked: inner dimensions differ");
  if (!acc) C = Mat(M, N);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += (ta ? A(k, i) : A(i, k)) * (tb ? B(j, k) : B(k, j));
      C(i, j) += s;
    }
  }
}

// Keeps the lower triangle (diagonal included when `diag`), zeroes the rest.
void mask(Mat& A, bool diag) {
  for (int i = 0; i < A.rows; ++i) {
    for (int j = 0; j < A.cols; ++j) {
      if (j > i || (j == i && !diag)) A(i, j) = 0;
    }
  }
}

// (I − L)⁻¹ for a strictly lower triangular L, by forward substitution.
Mat unit_lower_inverse(const Mat& L) {
  const int n = L.rows;
  Mat G(n, n);
  for (int i = 0; i < n; ++i) {
    G(i, i) = 1;
    for (int j = 0; j < i; ++j) {
      double s = 0;
      for (int k = j; k < i; ++k) s += L(i, k) * G(k, j);
      G(i, j) = s;
    }
  }
  return G;
}

// One chunk's inputs (rows t0 … t0 + L − 1 of a head) and what the forward derives from them.
// `restart`: its first row starts a new document (the state before it is zero and takes no
// gradient).
struct Chunk {
  int t0 = 0, L = 0, N = 0;
  bool restart = false;
  Mat R, K, V, A, B, lam;         // (L, N)
  Mat G, Gh;                      // cumsum λ, exclusive
  Mat ER, EK, EB, EA, F;          // as in the header
  Mat Ark, Arb, Aak, Aab, Gam, Z, U, W, SA;
  std::vector<double> EL;         // e^{G_L}

  template <class R_>
  Chunk(const Wkv7Train<R_>& h, int start, int rows)
      : t0(start), L(rows), N(h.N), restart(h.reset && h.reset[start]) {
    for (Mat* m : {&R, &K, &V, &A, &B, &lam, &G, &Gh, &ER, &EK, &EB, &EA, &F}) *m = Mat(L, N);
    for (int t = 0; t < L; ++t) {
      const size_t o = size_t(t0 + t) * size_t(h.stride);
      for (int j = 0; j < N; ++j) {
        R(t, j) = h.r[o + j], K(t, j) = h.k[o + j], V(t, j) = h.v[o + j];
        A(t, j) = h.a[o + j], B(t, j) = h.b[o + j], lam(t, j) = h.w[o + j];
        G(t, j) = (t ? G(t - 1, j) : 0.0) + lam(t, j);
        Gh(t, j) = G(t, j) - lam(t, j);
      }
    }
    EL.resize(size_t(N));
    for (int j = 0; j < N; ++j) EL[j] = std::exp(G(L - 1, j));
    for (int t = 0; t < L; ++t) {
      for (int j = 0; j < N; ++j) {
        ER(t, j) = R(t, j) * std::exp(G(t, j));
        EK(t, j) = K(t, j) * std::exp(-G(t, j));
        EB(t, j) = B(t, j) * std::exp(-G(t, j));
        EA(t, j) = A(t, j) * std::exp(Gh(t, j));
        F(t, j) = std::exp(G(L - 1, j) - G(t, j));
      }
    }
    mul(ER, false, EK, true, Ark), mask(Ark, true);
    mul(ER, false, EB, true, Arb), mask(Arb, true);
    mul(EA, false, EK, true, Aak), mask(Aak, false);
    mul(EA, false, EB, true, Aab), mask(Aab, false);
    Gam = unit_lower_inverse(Aab);
    mul(Aak, false, V, false, Z);
    mul(Gam, false, Z, false, U);
    mul(Gam, false, EA, false, W);
  }

  // SA and Y from the state before the chunk, S₀ (value-major N×N).
  void output(const Mat& S0, Mat& Y) {
    SA = U;
    mul(W, false, S0, true, SA, true);
    mul(Ark, false, V, false, Y);
    mul(Arb, false, SA, false, Y, true);
    mul(ER, false, S0, true, Y, true);
  }
  // S_next = S₀ M + C.
  // K⊙F and B⊙F: the rows' weights in the state after the chunk.
  void decayed(Mat& KF, Mat& BF) const {
    KF = Mat(L, N), BF = Mat(L, N);
    for (size_t e = 0; e < KF.v.size(); ++e) KF.v[e] = K.v[e] * F.v[e], BF.v[e] = B.v[e] * F.v[e];
  }
  void transition(Mat& M, Mat& C) const {
    Mat KF, BF;
    decayed(KF, BF);
    mul(W, true, BF, false, M);
    for (int j = 0; j < N; ++j) M(j, j) += EL[j];
    mul(V, true, KF, false, C);
    mul(U, true, BF, false, C, true);
  }
  // ∂S₀ = ∂S_next Mᵀ + Q with Q = ∂Yᵀ(A_rb W + ER).
  Mat state_grad_term(const Mat& dY) const {
    Mat ArbW, Q;
    mul(Arb, false, W, false, ArbW);
    for (size_t e = 0; e < ArbW.v.size(); ++e) ArbW.v[e] += ER.v[e];
    mul(dY, true, ArbW, false, Q);
    return Q;
  }
};

// Every chunk of a head with the states before each (phases 1 and 2 of the header). A chunk
// ends after Lc rows or before a row that starts a new document.
struct Chunks {
  std::vector<Chunk> chunk;
  std::vector<Mat> M, before;  // transitions; states before each chunk, then S_T last
  template <class R>
  Chunks(const Wkv7Train<R>& h, int Lc, Mat S0) {
    for (int t0 = 0; t0 < h.T;) {
      int end = std::min(h.T, t0 + Lc);
      for (int t = t0 + 1; t < end && h.reset; ++t) {
        if (h.reset[t]) end = t;
      }
      chunk.emplace_back(h, t0, end - t0);
      t0 = end;
    }
    Mat S = std::move(S0);
    for (Chunk& c : chunk) {
      if (c.restart) S = Mat(S.rows, S.cols);
      Mat Mc, Cc, next;
      c.transition(Mc, Cc);
      mul(S, false, Mc, false, next);
      for (size_t e = 0; e < next.v.size(); ++e) next.v[e] += Cc.v[e];
      M.push_back(std::move(Mc));
      before.push_back(std::move(S));
      S = std::move(next);
    }
    before.push_back(std::move(S));
  }
};

template <class R>
void check(const Wkv7Train<R>& h, int Lc) {
  if (Lc < 1 || Lc > 64) fail("wkv7 chunked: chunk length ", Lc, " outside 1 … 64");
}

template <class R>
Mat load_state(const R* S, int N) {
  Mat m(N, N);
  for (size_t e = 0; e < m.v.size(); ++e) m.v[e] = S ? double(S[e]) : 0.0;
  return m;
}

}  // namespace

template <class R>
void wkv7_chunked_forward(const Wkv7Train<R>& h, int Lc) {
  check(h, Lc);
  const int N = h.N;
  Chunks all(h, Lc, load_state(h.S, N));
  Mat Y;
  for (size_t c = 0; c < all.chunk.size(); ++c) {
    Chunk& ch = all.chunk[c];
    ch.output(all.before[c], Y);
    for (int t = 0; t < ch.L; ++t) {
      for (int i = 0; i < N; ++i) h.y[size_t(ch.t0 + t) * size_t(h.stride) + i] = R(Y(t, i));
    }
  }
  const Mat& S = all.before.back();
  for (size_t e = 0; e < S.v.size(); ++e) h.S[e] = R(S.v[e]);
}

template <class R>
void wkv7_chunked_backward(const Wkv7Train<R>& h, int Lc, const R* dy, const R* dS_T, R* dr, R* dw, R* dk,
                           R* dv, R* da, R* db, R* dS0) {
  check(h, Lc);
  const int N = h.N;
  Chunks all(h, Lc, load_state(h.S, N));
  const size_t chunks = all.chunk.size();
  const auto rows_of = [&](size_t c) {
    const Chunk& ch = all.chunk[c];
    Mat dY(ch.L, N);
    for (int t = 0; t < ch.L; ++t) {
      for (int i = 0; i < N; ++i) dY(t, i) = dy[size_t(ch.t0 + t) * size_t(h.stride) + i];
    }
    return dY;
  };
  // ∂/∂(the state after each chunk), newest chunk first: ∂S₀ = ∂S_next Mᵀ + ∂Yᵀ(A_rb W + ER).
  std::vector<Mat> dS_after(chunks);
  Mat carry = load_state(dS_T, N);
  for (size_t c = chunks; c-- > 0;) {
    dS_after[c] = carry;
    if (all.chunk[c].restart) {  // the state before it was zero, not the one carried in
      carry = Mat(N, N);
      continue;
    }
    Mat next = all.chunk[c].state_grad_term(rows_of(c));
    mul(carry, false, all.M[c], true, next, true);
    carry = next;
  }
  if (dS0) {
    for (size_t e = 0; e < carry.v.size(); ++e) dS0[e] = R(carry.v[e]);
  }
  // Every chunk's input gradients from its state before and the gradient of its state after.
  for (size_t c = 0; c < chunks; ++c) {
    Chunk& ch = all.chunk[c];
    const int L = ch.L, t0 = ch.t0;
    const Mat& S0 = all.before[c];
    const Mat& dS = dS_after[c];
    const Mat dY = rows_of(c);
    Mat Yc;
    ch.output(S0, Yc);  // sets ch.SA
    Mat dR(L, N), dK(L, N), dV(L, N), dA(L, N), dB(L, N), dG(L, N), dGh(L, N), dF(L, N), dSA(L, N);
    std::vector<double> dGL(size_t(N), 0.0);
    // S_next = S₀ diag(E_L) + Vᵀ (K⊙F) + SAᵀ (B⊙F)
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        dGL[j] += S0(i, j) * dS(i, j) * ch.EL[j];
      }
    }
    Mat KF, BF, VdS, SAdS;
    ch.decayed(KF, BF);
    mul(KF, false, dS, true, dV, true);
    mul(ch.V, false, dS, false, VdS);
    mul(BF, false, dS, true, dSA, true);
    mul(ch.SA, false, dS, false, SAdS);
    for (size_t e = 0; e < dK.v.size(); ++e) {
      dK.v[e] += VdS.v[e] * ch.F.v[e];
      dB.v[e] += SAdS.v[e] * ch.F.v[e];
      dF.v[e] += VdS.v[e] * ch.K.v[e] + SAdS.v[e] * ch.B.v[e];
    }
    // Y = A_rk V + A_rb SA + ER S₀ᵀ
    Mat dArk, dArb, dER;
    mul(dY, false, ch.V, true, dArk), mask(dArk, true);
    mul(ch.Ark, true, dY, false, dV, true);
    mul(dY, false, ch.SA, true, dArb), mask(dArb, true);
    mul(ch.Arb, true, dY, false, dSA, true);
    mul(dY, false, S0, false, dER);
    // SA = U + W S₀ᵀ ; U = Γ Z, Z = A_ak V ; W = Γ EA
    Mat dW, dGam, dZ, dAak, dEA, dAab;
    mul(dSA, false, S0, false, dW);
    mul(dSA, false, ch.Z, true, dGam);
    mul(ch.Gam, true, dSA, false, dZ);
    mul(dZ, false, ch.V, true, dAak), mask(dAak, false);
    mul(ch.Aak, true, dZ, false, dV, true);
    mul(dW, false, ch.EA, true, dGam, true);
    mul(ch.Gam, true, dW, false, dEA);
    // Γ = (I − A_ab)⁻¹: ∂/∂A_ab = Γᵀ ∂Γ Γᵀ (strictly lower part)
    Mat tmp;
    mul(ch.Gam, true, dGam, false, tmp);
    mul(tmp, false, ch.Gam, true, dAab), mask(dAab, false);
    // The four products of the factorised inputs.
    Mat dEK, dEB;
    mul(dArk, false, ch.EK, false, dER, true);
    mul(dArk, true, ch.ER, false, dEK);
    mul(dArb, false, ch.EB, false, dER, true);
    mul(dArb, true, ch.ER, false, dEB);
    mul(dAak, false, ch.EK, false, dEA, true);
    mul(dAak, true, ch.EA, false, dEK, true);
    mul(dAab, false, ch.EB, false, dEA, true);
    mul(dAab, true, ch.EA, false, dEB, true);
    for (int t = 0; t < L; ++t) {
      for (int j = 0; j < N; ++j) {
        const double eg = std::exp(ch.G(t, j)), egh = std::exp(ch.Gh(t, j));
        dR(t, j) += dER(t, j) * eg;
        dG(t, j) += dER(t, j) * ch.ER(t, j);
        dK(t, j) += dEK(t, j) / eg;
        dG(t, j) -= dEK(t, j) * ch.EK(t, j);
        dB(t, j) += dEB(t, j) / eg;
        dG(t, j) -= dEB(t, j) * ch.EB(t, j);
        dA(t, j) += dEA(t, j) * egh;
        dGh(t, j) += dEA(t, j) * ch.EA(t, j);
        const double fF = dF(t, j) * ch.F(t, j);
        dGL[j] += fF;
        dG(t, j) -= fF;
      }
    }
    for (int j = 0; j < N; ++j) dG(L - 1, j) += dGL[j];
    // Ĝ = G − λ ; G = cumsum λ → ∂λ_s = Σ_{t ≥ s} ∂G_t − ∂Ĝ_s
    for (int j = 0; j < N; ++j) {
      double suffix = 0;
      for (int t = L - 1; t >= 0; --t) {
        suffix += dG(t, j) + dGh(t, j);
        const size_t o = size_t(t0 + t) * size_t(h.stride) + j;
        dw[o] = R(suffix - dGh(t, j));
        dr[o] = R(dR(t, j)), dk[o] = R(dK(t, j)), dv[o] = R(dV(t, j)), da[o] = R(dA(t, j)), db[o] = R(dB(t, j));
      }
    }
  }
}

template void wkv7_chunked_forward<float>(const Wkv7Train<float>&, int);
template void wkv7_chunked_forward<double>(const Wkv7Train<double>&, int);
template void wkv7_chunked_backward<float>(const Wkv7Train<float>&, int, const float*, const float*, float*,
                                           float*, float*, float*, float*, float*, float*);
template void wkv7_chunked_backward<double>(const Wkv7Train<double>&, int, const double*, const double*, double*,
                                            double*, double*, double*, double*, double*, double*);

}  // namespace rwkv::ops::train
