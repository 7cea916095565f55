// WKV-7 in its chunked form (spec §4.5: generalised delta rule, WY representation) and that
// form's backward, derived here by reverse mode through its matrix expressions: the plain-loop
// reference of the chunked GPU kernels to come, checked against the sequential form. Per chunk of
// Lc rows, with λ the log-decays, G = cumsum λ, Ĝ = G − λ, ER = R⊙e^G, EA = A⊙e^Ĝ, EK = K⊙e^−G,
// EB = B⊙e^−G (factorised as in fla; |λ| < 0.61 keeps e^−G finite for Lc ≤ 64):
//   A_rk = tril(ER EKᵀ), A_rb = tril(ER EBᵀ), A_ak = stril(EA EKᵀ), A_ab = stril(EA EBᵀ)
//   Γ = (I − A_ab)⁻¹, U = Γ A_ak V, W = Γ EA, SA = U + W S₀ᵀ
//   Y = A_rk V + A_rb SA + ER S₀ᵀ
//   S_next = S₀ diag(e^{G_L}) + Vᵀ (K⊙F) + SAᵀ (B⊙F),  F = e^{G_L − G}
// Internally in double whatever R is.
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
struct Chunk {
  int L = 0, N = 0;
  Mat R, K, V, A, B, lam;         // (L, N)
  Mat G, Gh;                      // cumsum λ, exclusive
  Mat ER, EK, EB, EA, F;          // as in the header
  Mat Ark, Arb, Aak, Aab, Gam, Z, U, W, SA;
  std::vector<double> EL;         // e^{G_L}

  template <class R_>
  Chunk(const Wkv7Train<R_>& h, int t0, int rows) : L(rows), N(h.N) {
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

  // SA and Y from S₀ (value-major N×N); S₀ ← S_next.
  void forward(Mat& S, Mat& Y) {
    SA = U;
    mul(W, false, S, true, SA, true);
    mul(Ark, false, V, false, Y);
    mul(Arb, false, SA, false, Y, true);
    mul(ER, false, S, true, Y, true);
    Mat next(N, N);
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) next(i, j) = S(i, j) * EL[j];
    }
    Mat KF(L, N), BF(L, N);
    for (size_t e = 0; e < KF.v.size(); ++e) KF.v[e] = K.v[e] * F.v[e], BF.v[e] = B.v[e] * F.v[e];
    mul(V, true, KF, false, next, true);
    mul(SA, true, BF, false, next, true);
    S = next;
  }
};

template <class R>
void check(const Wkv7Train<R>& h, int Lc) {
  if (Lc < 1 || Lc > 64) fail("wkv7 chunked: chunk length ", Lc, " outside 1 … 64");
  if (h.reset) fail("wkv7 chunked: document resets are not supported");
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
  Mat S = load_state(h.S, N), Y;
  for (int t0 = 0; t0 < h.T; t0 += Lc) {
    Chunk c(h, t0, std::min(Lc, h.T - t0));
    c.forward(S, Y);
    for (int t = 0; t < c.L; ++t) {
      for (int i = 0; i < N; ++i) h.y[size_t(t0 + t) * size_t(h.stride) + i] = R(Y(t, i));
    }
  }
  for (size_t e = 0; e < S.v.size(); ++e) h.S[e] = R(S.v[e]);
}

template <class R>
void wkv7_chunked_backward(const Wkv7Train<R>& h, int Lc, const R* dy, const R* dS_T, R* dr, R* dw, R* dk,
                           R* dv, R* da, R* db, R* dS0) {
  check(h, Lc);
  const int N = h.N, chunks = (h.T + Lc - 1) / Lc;
  // The state before every chunk, from a forward pass.
  std::vector<Mat> before;
  Mat S = load_state(h.S, N), Y;
  for (int c = 0; c < chunks; ++c) {
    before.push_back(S);
    Chunk ch(h, c * Lc, std::min(Lc, h.T - c * Lc));
    ch.forward(S, Y);
  }
  Mat dS = load_state(dS_T, N);  // ∂/∂S_next of the chunk being walked
  for (int c = chunks - 1; c >= 0; --c) {
    const int t0 = c * Lc;
    Chunk ch(h, t0, std::min(Lc, h.T - t0));
    const int L = ch.L;
    Mat S0 = before[size_t(c)], Yc;
    Mat Sn = S0;
    ch.forward(Sn, Yc);  // sets ch.SA
    Mat dY(L, N);
    for (int t = 0; t < L; ++t) {
      for (int i = 0; i < N; ++i) dY(t, i) = dy[size_t(t0 + t) * size_t(h.stride) + i];
    }
    Mat dR(L, N), dK(L, N), dV(L, N), dA(L, N), dB(L, N), dG(L, N), dGh(L, N), dF(L, N), dSA(L, N);
    Mat dS0c(N, N);
    std::vector<double> dGL(size_t(N), 0.0);
    // S_next = S₀ diag(E_L) + Vᵀ (K⊙F) + SAᵀ (B⊙F)
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        dS0c(i, j) += dS(i, j) * ch.EL[j];
        dGL[j] += S0(i, j) * dS(i, j) * ch.EL[j];
      }
    }
    Mat KF(L, N), BF(L, N), VdS, SAdS;
    for (size_t e = 0; e < KF.v.size(); ++e) KF.v[e] = ch.K.v[e] * ch.F.v[e], BF.v[e] = ch.B.v[e] * ch.F.v[e];
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
    mul(dY, true, ch.ER, false, dS0c, true);
    // SA = U + W S₀ᵀ ; U = Γ Z, Z = A_ak V ; W = Γ EA
    Mat dW, dGam, dZ, dAak, dEA, dAab;
    mul(dSA, false, S0, false, dW);
    mul(dSA, true, ch.W, false, dS0c, true);
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
    dS = dS0c;
  }
  if (dS0) {
    for (size_t e = 0; e < dS.v.size(); ++e) dS0[e] = R(dS.v[e]);
  }
}

template void wkv7_chunked_forward<float>(const Wkv7Train<float>&, int);
template void wkv7_chunked_forward<double>(const Wkv7Train<double>&, int);
template void wkv7_chunked_backward<float>(const Wkv7Train<float>&, int, const float*, const float*, float*,
                                           float*, float*, float*, float*, float*, float*);
template void wkv7_chunked_backward<double>(const Wkv7Train<double>&, int, const double*, const double*, double*,
                                            double*, double*, double*, double*, double*, double*);

}  // namespace rwkv::ops::train
