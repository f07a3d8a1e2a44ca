// Fused CPU time loop for the custom members of the LSTM family (peephole, CIFG).
//
// The input projection of every step is computed outside (one matmul over the whole sequence); this
// file owns only the recurrence: per step one GEMM (h_{t-1} @ R^T) plus one vectorised pointwise pass
// over the gates. The backward pass walks time in reverse with one GEMM per step and leaves the
// weight gradients (dR, peepholes) to a few large reductions at the end.
//
// Layout (time-major, row-major): xp (T, B, G*H), gates in the order [i, f, g, o] (G = 4) or, when
// the input gate is coupled (i = 1 - f), [f, g, o] (G = 3).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/empty_like.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

inline Vec vsigmoid(const Vec& x) {
  const Vec one(1.f);
  return one / (one + x.neg().exp_u20());
}

// tanh(x) = 2 sigmoid(2x) - 1: one fast exponential instead of a library call; the absolute error
// (a few 1e-8) is far inside the 1e-5 parity tolerance.
inline Vec vtanh(const Vec& x) {
  const Vec two(2.f);
  return two * vsigmoid(two * x) - Vec(1.f);
}

// MKL's packed GEMM, when the torch build links MKL (weak: null elsewhere, and we fall back to ATen).
// Packing R once per call saves re-packing the recurrent weights at every step.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kBMatrix = 162, kPacked = 151;

// The recurrent product's backends (chosen per machine and shape by measurement in kernels.py):
// kMkl: MKL's packed GEMM (when the torch build links MKL; else ATen); kAten: at::mm (whatever BLAS
// torch uses); kBlocked: the register-blocked kernel below, written with ATen's vector types, so it
// runs at the width this file was built for on any x86-64 CPU (MKL picks slower paths on some).
constexpr int64_t kMkl = 0, kAten = 1, kBlocked = 2;

// ---- the blocked kernel: op(W) (k x n) packed into column panels of NR floats (k-major inside a
// panel, zero-padded), each MR x NR block of C accumulated in registers over the whole k.
constexpr int64_t NR = 2 * kW;
constexpr int MR = kW == 16 ? 8 : 6;  // AVX-512: 16 accumulators of its 32 registers; else 12

void pack_panels(const float* W, int64_t ldw, bool trans, int64_t k, int64_t n, float* out) {
  const int64_t panels = (n + NR - 1) / NR;
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t kk = 0; kk < k; ++kk) {
      float* dst = out + (p * k + kk) * NR;
      for (int64_t jj = 0; jj < NR; ++jj) {
        const int64_t j = p * NR + jj;
        dst[jj] = j < n ? (trans ? W[j * ldw + kk] : W[kk * ldw + j]) : 0.f;
      }
    }
  }
}

// One ROWS x NR block of C = beta * C + A @ B over k: A(r, kk) = A[r * ars + kk * aks] (row-major A:
// ars = lda, aks = 1; a transposed one: ars = 1, aks = lda); B's rows are ldb apart (NR for packed
// panels, the matrix's row stride when read in place); only ncols columns are read and written.
template <int ROWS>
inline void micro(const float* A, int64_t ars, int64_t aks, const float* P, int64_t ldb, int64_t k, float* C,
                  int64_t ldc, int64_t ncols, float beta) {
  Vec acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    acc0[r] = Vec(0.f);
    acc1[r] = Vec(0.f);
  }
  const int64_t n0 = std::min<int64_t>(kW, ncols), n1 = ncols - n0;
  for (int64_t kk = 0; kk < k; ++kk) {
    const Vec b0 = Vec::loadu(P + kk * ldb, n0);
    const Vec b1 = n1 > 0 ? Vec::loadu(P + kk * ldb + kW, n1) : Vec(0.f);
    for (int r = 0; r < ROWS; ++r) {
      const Vec a(A[r * ars + kk * aks]);
      acc0[r] = at::vec::fmadd(a, b0, acc0[r]);
      acc1[r] = at::vec::fmadd(a, b1, acc1[r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    float* c = C + r * ldc;
    if (beta != 0.f) {
      acc0[r] = at::vec::fmadd(Vec(beta), Vec::loadu(c, n0), acc0[r]);
      if (n1 > 0) acc1[r] = at::vec::fmadd(Vec(beta), Vec::loadu(c + kW, n1), acc1[r]);
    }
    acc0[r].store(c, n0);
    if (n1 > 0) acc1[r].store(c + kW, n1);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512 blocks of ROWS x 32 with intrinsics: the 2 x ROWS accumulators stay in registers for the
// whole k loop (the generic version above leaves that to the compiler, which spills them).
template <int ROWS>
inline void micro_avx512(const float* A, int64_t ars, int64_t aks, const float* P, int64_t ldb, int64_t k,
                         float* C, int64_t ldc, int64_t ncols, float beta) {
  static_assert(NR == 32, "the AVX-512 block is 32 columns wide");
  const __mmask16 m0 = ncols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << ncols) - 1);
  const __mmask16 m1 = ncols >= 32 ? 0xFFFF : ncols <= 16 ? 0 : static_cast<__mmask16>((1u << (ncols - 16)) - 1);
  __m512 acc0[ROWS], acc1[ROWS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, P + kk * ldb), b1 = _mm512_maskz_loadu_ps(m1, P + kk * ldb + 16);
    const float* a_k = A + kk * aks;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m512 a = _mm512_set1_ps(a_k[r * ars]);
      acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
    }
  }
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    float* c = C + r * ldc;
    __m512 x0 = acc0[r], x1 = acc1[r];
    if (beta != 0.f) {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), x1);
    }
    _mm512_mask_storeu_ps(c, m0, x0);
    if (m1) _mm512_mask_storeu_ps(c + 16, m1, x1);
  }
}
#define CELLSEARCH_MICRO micro_avx512
#else
#define CELLSEARCH_MICRO micro
#endif

template <int ROWS>
void micro_rows(int rows, const float* A, int64_t ars, int64_t aks, const float* P, int64_t ldb, int64_t k,
                float* C, int64_t ldc, int64_t ncols, float beta) {
  if constexpr (ROWS > 0) {
    if (rows == ROWS) return CELLSEARCH_MICRO<ROWS>(A, ars, aks, P, ldb, k, C, ldc, ncols, beta);
    micro_rows<ROWS - 1>(rows, A, ars, aks, P, ldb, k, C, ldc, ncols, beta);
  }
}

// One panel column of C: every MR-row block, then the remaining rows.
inline void panel_rows(const float* A, int64_t ars, int64_t aks, int64_t m, const float* P, int64_t ldb,
                       int64_t k, float* C, int64_t ldc, int64_t ncols, float beta) {
  int64_t r = 0;
  for (; r + MR <= m; r += MR) CELLSEARCH_MICRO<MR>(A + r * ars, ars, aks, P, ldb, k, C + r * ldc, ldc, ncols, beta);
  if (r < m) micro_rows<MR - 1>(static_cast<int>(m - r), A + r * ars, ars, aks, P, ldb, k, C + r * ldc, ldc, ncols, beta);
}

// C (m x n) = A (m x k, row-major) @ panels + beta * C; threads split the panels.
void blocked_gemm(const float* A, int64_t m, int64_t k, const float* P, int64_t n, float* C, float beta) {
  const int64_t panels = (n + NR - 1) / NR;
  const int64_t work = std::max<int64_t>(1, m * k * NR);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / work);  // >= ~1M FMAs per task: a
  // smaller product is done before a second thread would have started
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      panel_rows(A, k, 1, m, P + p * k * NR, NR, k, C + p * NR, n, std::min<int64_t>(NR, n - p * NR), beta);
  });
}

// C (m x n) = A^T @ B for A (k x m) and B (k x n), both row-major: the weight gradients' large
// products. k is taken in chunks; each thread copies its panel's slice of B (KC x NR) into a contiguous
// buffer first (read in place, its rows sit 4n bytes apart and thrash the L1 cache's sets).
void blocked_gemm_tn(const float* A, const float* B, int64_t k, int64_t m, int64_t n, float* C) {
  constexpr int64_t KC = 256;
  const int64_t panels = (n + NR - 1) / NR, blocks = (m + MR - 1) / MR;
  std::vector<float> apack(blocks * KC * MR);  // A's chunk, MR rows at a time, k-major: contiguous broadcasts
  for (int64_t k0 = 0; k0 < k; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, k - k0);
    at::parallel_for(0, blocks, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t kk = 0; kk < kc; ++kk)
          for (int64_t r = 0; r < MR; ++r)
            apack[(q * kc + kk) * MR + r] = q * MR + r < m ? A[(k0 + kk) * m + q * MR + r] : 0.f;
    });
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> buf(KC * NR);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t ncols = std::min<int64_t>(NR, n - p * NR);
        for (int64_t kk = 0; kk < kc; ++kk)
          std::copy_n(B + (k0 + kk) * n + p * NR, ncols, buf.data() + kk * NR);
        for (int64_t q = 0; q < blocks; ++q) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, m - q * MR));
          const float* a = apack.data() + q * kc * MR;
          float* c = C + q * MR * n + p * NR;
          const float beta = k0 == 0 ? 0.f : 1.f;
          if (rows == MR) CELLSEARCH_MICRO<MR>(a, 1, MR, buf.data(), NR, kc, c, n, ncols, beta);
          else micro_rows<MR - 1>(rows, a, 1, MR, buf.data(), NR, kc, c, n, ncols, beta);
        }
      }
    });
  }
}

// dW = dG^T @ Hs for dG (k x g) and Hs (k x h): the recurrent weights' gradient (g x h).
at::Tensor weight_grad(const at::Tensor& dG_in, const at::Tensor& Hs_in, int64_t backend) {
  if (backend != kBlocked) return at::mm(dG_in.t(), Hs_in);
  const at::Tensor dG = dG_in.contiguous(), Hs = Hs_in.contiguous();
  const int64_t k = dG.size(0), g = dG.size(1), h = Hs.size(1);
  at::Tensor dWt = at::empty({h, g}, dG.options());  // Hs^T @ dG, then transposed once (small)
  blocked_gemm_tn(Hs.data_ptr<float>(), dG.data_ptr<float>(), k, h, g, dWt.data_ptr<float>());
  return dWt.t().contiguous();
}

// C (m x n, row-major) = A (m x k) @ op(W) + beta * C, op(W) prepared once per call for the backend.
class PackedRight {
 public:
  PackedRight(const at::Tensor& W, bool transpose, int64_t n, int64_t k, int64_t m, int64_t backend)
      : W_(W), t_(transpose) {
    const bool mkl = cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
    backend_ = backend == kMkl && !mkl ? kAten : backend;
    n_ = n; k_ = k; Wop_ = t_ ? W.t() : W;
    if (backend_ == kMkl) {
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, n, k);
      buf_ = at::empty({static_cast<int64_t>(bytes / sizeof(float) + 16)}, W.options());
      cblas_sgemm_pack(kRowMajor, kBMatrix, t_ ? kTrans : kNoTrans, m, n, k, 1.f,
                       W.data_ptr<float>(), W.size(1), buf_.data_ptr<float>());
    } else if (backend_ == kBlocked) {
      buf_ = at::empty({((n + NR - 1) / NR) * k * NR + 16}, W.options());
      pack_panels(W.data_ptr<float>(), W.size(1), t_, k, n, buf_.data_ptr<float>());
    }
  }
  void run(const at::Tensor& A, at::Tensor C, float beta) const {
    if (backend_ == kMkl) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, A.size(0), n_, k_, A.data_ptr<float>(), k_,
                          buf_.data_ptr<float>(), n_, beta, C.data_ptr<float>(), n_);
    } else if (backend_ == kBlocked) {
      blocked_gemm(A.data_ptr<float>(), A.size(0), k_, buf_.data_ptr<float>(), n_, C.data_ptr<float>(), beta);
    } else if (beta == 0.f) {
      at::mm_out(C, A, Wop_);
    } else {
      C.addmm_(A, Wop_);
    }
  }
 private:
  at::Tensor W_, Wop_, buf_;
  bool t_;
  int64_t backend_ = kAten, n_ = 0, k_ = 0;
};

// ---- reused buffers: the loop's large per-call tensors (gate activations, states, their gradients:
// 26 MB each at batch 64, 100 steps, hidden 256) come from a small pool instead of fresh allocations.
// A fresh block of that size is fresh pages from the OS, and faulting them in cost more than the
// arithmetic that fills them. A pooled block is handed out only while nothing else holds its storage
// (every tensor given out is a view, so a caller keeping one, or any view of it, keeps the block
// taken); free blocks beyond kPoolBytes are released.
constexpr int64_t kPoolBytes = int64_t{512} << 20;

at::Tensor pooled(at::IntArrayRef sizes, const at::TensorOptions& options) {
  static std::mutex lock;
  static std::vector<at::Tensor> pool;
  int64_t numel = 1;
  for (int64_t v : sizes) numel *= v;
  std::lock_guard<std::mutex> guard(lock);
  auto is_free = [](const at::Tensor& t) { return t.use_count() == 1 && t.storage().use_count() == 1; };
  for (const at::Tensor& t : pool)
    if (t.numel() == numel && t.dtype() == options.dtype() && t.device() == options.device() && is_free(t))
      return t.view(sizes);
  at::Tensor fresh = at::empty({numel}, options);
  pool.push_back(fresh);
  int64_t bytes = 0;
  for (const at::Tensor& t : pool) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  for (auto it = pool.begin(); bytes > kPoolBytes && it != pool.end();) {  // oldest free blocks first
    if (is_free(*it) && !it->is_same(fresh)) {
      bytes -= it->numel() * static_cast<int64_t>(it->element_size());
      it = pool.erase(it);
    } else {
      ++it;
    }
  }
  return fresh.view(sizes);
}

struct Ptrs {
  const float* p_i;  // peephole weights, or nullptr
  const float* p_f;
  const float* p_o;
};

// Gate offsets inside one row of G*H.
template <bool COUPLED>
struct Layout {
  static constexpr int G = COUPLED ? 3 : 4;
  static int64_t i(int64_t) { return 0; }
  static int64_t f(int64_t H) { return COUPLED ? 0 : H; }
  static int64_t g(int64_t H) { return COUPLED ? H : 2 * H; }
  static int64_t o(int64_t H) { return COUPLED ? 2 * H : 3 * H; }
};

// One forward step for rows [b0, b1): gates holds pre-activations on entry, activations on exit.
template <bool PEEP, bool COUPLED>
void forward_rows(int64_t b0, int64_t b1, int64_t H, const float* xp, const float* rec, float* gates,
                  const float* c_prev, float* c_out, float* tc_out, float* h_out, const Ptrs& p) {
  // Pre-activations are xp + rec (rec: this step's recurrent product, nullptr at the first step);
  // the activations go to gates (kept for the backward pass).
  using L = Layout<COUPLED>;
  const int64_t GH = L::G * H;
  const Vec one(1.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xr = xp + b * GH;
    const float* rr = rec ? rec + b * GH : nullptr;
    float* gr = gates + b * GH;
    const float* cp = c_prev + b * H;
    float* co = c_out + b * H;
    float* tco = tc_out + b * H;
    float* ho = h_out + b * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t n = std::min<int64_t>(kW, H - j);
      auto pre = [&](int64_t off) {
        const Vec v = Vec::loadu(xr + off + j, n);
        return rr ? v + Vec::loadu(rr + off + j, n) : v;
      };
      const Vec c = Vec::loadu(cp + j, n);
      Vec af = pre(L::f(H));
      if constexpr (PEEP) af = at::vec::fmadd(Vec::loadu(p.p_f + j, n), c, af);
      const Vec f = vsigmoid(af);
      Vec i;
      if constexpr (COUPLED) {
        i = one - f;
      } else {
        Vec ai = pre(L::i(H));
        if constexpr (PEEP) ai = at::vec::fmadd(Vec::loadu(p.p_i + j, n), c, ai);
        i = vsigmoid(ai);
        i.store(gr + L::i(H) + j, n);
      }
      const Vec g = vtanh(pre(L::g(H)));
      const Vec cn = at::vec::fmadd(f, c, i * g);
      Vec ao = pre(L::o(H));
      if constexpr (PEEP) ao = at::vec::fmadd(Vec::loadu(p.p_o + j, n), cn, ao);
      const Vec o = vsigmoid(ao);
      const Vec tc = vtanh(cn);
      f.store(gr + L::f(H) + j, n);
      g.store(gr + L::g(H) + j, n);
      o.store(gr + L::o(H) + j, n);
      cn.store(co + j, n);
      tc.store(tco + j, n);
      (o * tc).store(ho + j, n);
    }
  }
}

// One backward step for rows [b0, b1). dh = dy_t + dh_rec; writes the pre-activation gradients into
// dgates and the carried cell gradient into dc (in place: dc holds dc_t on entry, dc_{t-1} on exit).
template <bool PEEP, bool COUPLED>
void backward_rows(int64_t b0, int64_t b1, int64_t H, const float* gates, const float* c_prev,
                   const float* c_new, const float* tc, const float* dy, const float* dh_rec, float* dc,
                   float* dgates, const Ptrs& p, float* dpeep) {
  using L = Layout<COUPLED>;
  const int64_t GH = L::G * H;
  const Vec one(1.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* gr = gates + b * GH;
    float* dgr = dgates + b * GH;
    const float* cp = c_prev + b * H;
    const float* tcr = tc + b * H;
    const float* dyr = dy + b * H;
    const float* dhr = dh_rec + b * H;
    float* dcr = dc + b * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t n = std::min<int64_t>(kW, H - j);
      const Vec dh = Vec::loadu(dyr + j, n) + Vec::loadu(dhr + j, n);
      const Vec f = Vec::loadu(gr + L::f(H) + j, n);
      const Vec g = Vec::loadu(gr + L::g(H) + j, n);
      const Vec o = Vec::loadu(gr + L::o(H) + j, n);
      const Vec t = Vec::loadu(tcr + j, n);
      const Vec c = Vec::loadu(cp + j, n);
      const Vec dao = dh * t * o * (one - o);
      Vec dct = at::vec::fmadd(dh * o, one - t * t, Vec::loadu(dcr + j, n));
      if constexpr (PEEP) dct = at::vec::fmadd(dao, Vec::loadu(p.p_o + j, n), dct);
      Vec daf, dag, dcp;
      if constexpr (COUPLED) {
        daf = dct * (c - g) * f * (one - f);
        dag = dct * (one - f) * (one - g * g);
      } else {
        const Vec i = Vec::loadu(gr + L::i(H) + j, n);
        const Vec dai = dct * g * i * (one - i);
        daf = dct * c * f * (one - f);
        dag = dct * i * (one - g * g);
        dai.store(dgr + L::i(H) + j, n);
        if constexpr (PEEP) {
          dcp = dai * Vec::loadu(p.p_i + j, n);
          at::vec::fmadd(dai, c, Vec::loadu(dpeep + j, n)).store(dpeep + j, n);
        }
      }
      Vec dc_prev = dct * f;
      if constexpr (PEEP) {
        dc_prev = at::vec::fmadd(daf, Vec::loadu(p.p_f + j, n), dc_prev);
        if constexpr (!COUPLED) dc_prev = dc_prev + dcp;
        // Peephole gradients: p_i and p_f see c_{t-1}, p_o sees c_t.
        float* dpf = dpeep + H;
        float* dpo = dpeep + 2 * H;
        at::vec::fmadd(daf, c, Vec::loadu(dpf + j, n)).store(dpf + j, n);
        at::vec::fmadd(dao, Vec::loadu(c_new + b * H + j, n), Vec::loadu(dpo + j, n)).store(dpo + j, n);
      }
      daf.store(dgr + L::f(H) + j, n);
      dag.store(dgr + L::g(H) + j, n);
      dao.store(dgr + L::o(H) + j, n);
      dc_prev.store(dcr + j, n);
    }
  }
}

inline int64_t grain(int64_t H) {
  // Rows per task: keep each task at a few thousand elements so tiny layers stay single-threaded.
  return std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1));
}

Ptrs peep_ptrs(const at::Tensor& peep, int64_t H) {
  if (!peep.defined() || peep.numel() == 0) return {nullptr, nullptr, nullptr};
  const float* base = peep.data_ptr<float>();
  return {base, base + H, base + 2 * H};
}

void check(const at::Tensor& xp, const at::Tensor& R, int64_t G) {
  TORCH_CHECK(xp.dim() == 3 && xp.scalar_type() == at::kFloat && xp.is_contiguous(),
              "xp must be a contiguous float (T, B, G*H) tensor");
  TORCH_CHECK(R.dim() == 2 && R.size(0) == G * R.size(1) && xp.size(2) == R.size(0),
              "R must be (G*H, H) and match xp");
}

// Returns (y, c, tanh(c), activated gates), all time-major.
template <bool PEEP, bool COUPLED>
std::vector<at::Tensor> fwd_impl(const at::Tensor& xp, const at::Tensor& R, const at::Tensor& peep, int64_t gemm) {
  constexpr int G = Layout<COUPLED>::G;
  check(xp, R, G);
  const int64_t T = xp.size(0), B = xp.size(1), H = R.size(1);
  at::Tensor gates = pooled(xp.sizes(), xp.options());
  at::Tensor rec_out = pooled({B, G * H}, xp.options());
  at::Tensor y = pooled({T, B, H}, xp.options());
  at::Tensor c = pooled({T, B, H}, xp.options());
  at::Tensor tc = pooled({T, B, H}, xp.options());
  at::Tensor zero = at::zeros({B, H}, xp.options());
  const PackedRight rec(R, /*transpose=*/true, G * H, H, B, gemm);
  const Ptrs p = peep_ptrs(peep, H);
  float* gp = gates.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* cp = c.data_ptr<float>();
  float* tcp = tc.data_ptr<float>();
  const float* xpp = xp.data_ptr<float>();
  const float* rp = rec_out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0) rec.run(y.select(0, t - 1), rec_out, 0.f);
    const float* c_prev = t > 0 ? cp + (t - 1) * B * H : zero.data_ptr<float>();
    const float* xt = xpp + t * B * G * H;
    const float* rt = t > 0 ? rp : nullptr;
    float* gt = gp + t * B * G * H;
    float* ct = cp + t * B * H;
    float* tct = tcp + t * B * H;
    float* yt = yp + t * B * H;
    at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
      forward_rows<PEEP, COUPLED>(b0, b1, H, xt, rt, gt, c_prev, ct, tct, yt, p);
    });
  }
  return {y, c, tc, gates};
}

// Returns (dxp, dR, dpeep).
template <bool PEEP, bool COUPLED>
std::vector<at::Tensor> bwd_impl(const at::Tensor& dy_in, const at::Tensor& y, const at::Tensor& c,
                                 const at::Tensor& tc, const at::Tensor& gates, const at::Tensor& R,
                                 const at::Tensor& peep, int64_t gemm) {
  constexpr int G = Layout<COUPLED>::G;
  const int64_t T = y.size(0), B = y.size(1), H = R.size(1);
  at::Tensor dy = dy_in.contiguous();
  at::Tensor dgates = pooled(gates.sizes(), gates.options());
  at::Tensor dh = at::zeros({B, H}, y.options());
  at::Tensor dc = at::zeros({B, H}, y.options());
  at::Tensor zero = at::zeros({B, H}, y.options());
  const Ptrs p = peep_ptrs(peep, H);
  const float* gp = gates.data_ptr<float>();
  const float* cp = c.data_ptr<float>();
  const float* tcp = tc.data_ptr<float>();
  const float* dyp = dy.data_ptr<float>();
  float* dgp = dgates.data_ptr<float>();
  float* dcp = dc.data_ptr<float>();
  const PackedRight rec(R, /*transpose=*/false, H, G * H, B, gemm);
  // One peephole-gradient accumulator per thread, summed at the end.
  at::Tensor dpeep_acc = at::zeros({at::get_num_threads(), 3, H}, y.options());
  float* dpa = dpeep_acc.data_ptr<float>();
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* c_prev = t > 0 ? cp + (t - 1) * B * H : zero.data_ptr<float>();
    const float* dhp = dh.data_ptr<float>();
    at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
      backward_rows<PEEP, COUPLED>(b0, b1, H, gp + t * B * G * H, c_prev, cp + t * B * H,
                                   tcp + t * B * H, dyp + t * B * H, dhp, dcp, dgp + t * B * G * H, p,
                                   dpa + at::get_thread_num() * 3 * H);
    });
    if (t > 0) rec.run(dgates.select(0, t), dh, 0.f);
  }
  // Weight gradients in a few large operations.
  at::Tensor h_prev = y.narrow(0, 0, T - 1).reshape({(T - 1) * B, H});
  at::Tensor dg_rest = dgates.narrow(0, 1, T - 1).reshape({(T - 1) * B, G * H});
  at::Tensor dR = T > 1 ? weight_grad(dg_rest, h_prev, gemm) : at::zeros_like(R);
  at::Tensor dpeep = PEEP ? dpeep_acc.sum(0) : at::zeros_like(peep);
  return {dgates, dR, dpeep};
}

std::vector<at::Tensor> forward(const at::Tensor& xp, const at::Tensor& R, const at::Tensor& peep,
                                bool use_peep, bool coupled, int64_t gemm) {
  if (use_peep)
    return coupled ? fwd_impl<true, true>(xp, R, peep, gemm) : fwd_impl<true, false>(xp, R, peep, gemm);
  return coupled ? fwd_impl<false, true>(xp, R, peep, gemm) : fwd_impl<false, false>(xp, R, peep, gemm);
}

std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& c,
                                 const at::Tensor& tc, const at::Tensor& gates, const at::Tensor& R,
                                 const at::Tensor& peep, bool use_peep, bool coupled, int64_t gemm) {
  if (use_peep)
    return coupled ? bwd_impl<true, true>(dy, y, c, tc, gates, R, peep, gemm)
                   : bwd_impl<true, false>(dy, y, c, tc, gates, R, peep, gemm);
  return coupled ? bwd_impl<false, true>(dy, y, c, tc, gates, R, peep, gemm)
                 : bwd_impl<false, false>(dy, y, c, tc, gates, R, peep, gemm);
}

// C + A @ W^T through one backend, ``repeats`` times (C accumulates): the recurrent product alone, for
// the backends' parity test (tests/test_cells.py) and for timing the product by itself.
at::Tensor recurrent_product(const at::Tensor& A, const at::Tensor& W, const at::Tensor& C_in, int64_t backend,
                             int64_t repeats) {
  at::Tensor C = C_in.clone();
  const PackedRight rec(W, /*transpose=*/true, W.size(0), W.size(1), A.size(0), backend);
  for (int64_t r = 0; r < repeats; ++r) rec.run(A, C, 1.f);
  return C;
}

// "mkl,aten,blocked;512-bit": the GEMM backends this build can use, and its vector width.
std::string info() {
  const bool mkl = cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
  return std::string(mkl ? "mkl,aten,blocked" : "aten,blocked") + ";" + std::to_string(kW * 32) + "-bit";
}


// ---------------------------------------------------------------------------------------------------
// GRU (torch's nn.GRU semantics: the reset gate multiplies the recurrent product incl. its bias).
// xp (T, B, 3H) = x W_ih^T + b_ih, blocks [r, z, n]; R = W_hh (3H, H); bh = b_hh (3H).
// ---------------------------------------------------------------------------------------------------

void gru_forward_rows(int64_t b0, int64_t b1, int64_t H, const float* xp, const float* hp, const float* bh,
                      const float* h_prev, float* gates, float* hn_out, float* h_out) {
  const Vec one(1.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xr = xp + b * 3 * H;
    const float* hr = hp + b * 3 * H;
    float* g = gates + b * 3 * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t n = std::min<int64_t>(kW, H - j);
      const Vec r = vsigmoid(Vec::loadu(xr + j, n) + Vec::loadu(hr + j, n) + Vec::loadu(bh + j, n));
      const Vec z = vsigmoid(Vec::loadu(xr + H + j, n) + Vec::loadu(hr + H + j, n) + Vec::loadu(bh + H + j, n));
      const Vec hn = Vec::loadu(hr + 2 * H + j, n) + Vec::loadu(bh + 2 * H + j, n);
      const Vec nn = vtanh(at::vec::fmadd(r, hn, Vec::loadu(xr + 2 * H + j, n)));
      const Vec hp_ = Vec::loadu(h_prev + b * H + j, n);
      const Vec h = at::vec::fmadd(z, hp_ - nn, nn);  // (1 - z) n + z h
      r.store(g + j, n);
      z.store(g + H + j, n);
      nn.store(g + 2 * H + j, n);
      hn.store(hn_out + b * H + j, n);
      h.store(h_out + b * H + j, n);
    }
  }
}

void gru_backward_rows(int64_t b0, int64_t b1, int64_t H, const float* gates, const float* hn_all,
                       const float* h_prev, const float* dy, const float* dh_rec, float* dxp, float* dhp,
                       float* dh_carry) {
  const Vec one(1.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* g = gates + b * 3 * H;
    float* dx = dxp + b * 3 * H;
    float* dr_ = dhp + b * 3 * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t n = std::min<int64_t>(kW, H - j);
      const Vec dh = Vec::loadu(dy + b * H + j, n) + Vec::loadu(dh_rec + b * H + j, n);
      const Vec r = Vec::loadu(g + j, n);
      const Vec z = Vec::loadu(g + H + j, n);
      const Vec nn = Vec::loadu(g + 2 * H + j, n);
      const Vec hn = Vec::loadu(hn_all + b * H + j, n);
      const Vec hp_ = Vec::loadu(h_prev + b * H + j, n);
      const Vec dan = dh * (one - z) * (one - nn * nn);
      const Vec daz = dh * (hp_ - nn) * z * (one - z);
      const Vec dar = dan * hn * r * (one - r);
      dar.store(dx + j, n);
      daz.store(dx + H + j, n);
      dan.store(dx + 2 * H + j, n);
      dar.store(dr_ + j, n);
      daz.store(dr_ + H + j, n);
      (dan * r).store(dr_ + 2 * H + j, n);
      (dh * z).store(dh_carry + b * H + j, n);
    }
  }
}

// Returns (y, gates [r, z, n], hn = W_hn h + b_hn), time-major.
std::vector<at::Tensor> gru_forward(const at::Tensor& xp, const at::Tensor& R, const at::Tensor& bh, int64_t gemm) {
  check(xp, R, 3);
  const int64_t T = xp.size(0), B = xp.size(1), H = R.size(1);
  at::Tensor y = pooled({T, B, H}, xp.options());
  at::Tensor gates = pooled({T, B, 3 * H}, xp.options());
  at::Tensor hn = pooled({T, B, H}, xp.options());
  at::Tensor hp = at::zeros({B, 3 * H}, xp.options());
  at::Tensor zero = at::zeros({B, H}, xp.options());
  const PackedRight rec(R, /*transpose=*/true, 3 * H, H, B, gemm);
  const float* bp = bh.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0) rec.run(y.select(0, t - 1), hp, 0.f);
    const float* h_prev = t > 0 ? y.data_ptr<float>() + (t - 1) * B * H : zero.data_ptr<float>();
    const float* xpt = xp.data_ptr<float>() + t * B * 3 * H;
    float* gt = gates.data_ptr<float>() + t * B * 3 * H;
    float* hnt = hn.data_ptr<float>() + t * B * H;
    float* yt = y.data_ptr<float>() + t * B * H;
    const float* hpp = hp.data_ptr<float>();
    at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
      gru_forward_rows(b0, b1, H, xpt, hpp, bp, h_prev, gt, hnt, yt);
    });
  }
  return {y, gates, hn};
}

// Returns (dxp, dR, dbh).
std::vector<at::Tensor> gru_backward(const at::Tensor& dy_in, const at::Tensor& y, const at::Tensor& gates,
                                     const at::Tensor& hn, const at::Tensor& R, int64_t gemm) {
  const int64_t T = y.size(0), B = y.size(1), H = R.size(1);
  at::Tensor dy = dy_in.contiguous();
  at::Tensor dxp = pooled(gates.sizes(), gates.options());
  at::Tensor dhp = pooled(gates.sizes(), gates.options());
  at::Tensor dh = at::zeros({B, H}, y.options());
  at::Tensor carry = at::empty({B, H}, y.options());
  at::Tensor zero = at::zeros({B, H}, y.options());
  const PackedRight rec(R, /*transpose=*/false, H, 3 * H, B, gemm);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* h_prev = t > 0 ? y.data_ptr<float>() + (t - 1) * B * H : zero.data_ptr<float>();
    const float* gt = gates.data_ptr<float>() + t * B * 3 * H;
    const float* hnt = hn.data_ptr<float>() + t * B * H;
    const float* dyt = dy.data_ptr<float>() + t * B * H;
    const float* dhr = dh.data_ptr<float>();
    float* dxt = dxp.data_ptr<float>() + t * B * 3 * H;
    float* dht = dhp.data_ptr<float>() + t * B * 3 * H;
    float* cp = carry.data_ptr<float>();
    at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
      gru_backward_rows(b0, b1, H, gt, hnt, h_prev, dyt, dhr, dxt, dht, cp);
    });
    // dh_{t-1} = dh * z + d(hp) @ R
    rec.run(dhp.select(0, t), carry, 1.f);
    std::swap(dh, carry);
  }
  at::Tensor dR = T > 1 ? weight_grad(dhp.narrow(0, 1, T - 1).reshape({(T - 1) * B, 3 * H}),
                                      y.narrow(0, 0, T - 1).reshape({(T - 1) * B, H}), gemm)
                        : at::zeros_like(R);
  at::Tensor dbh = dhp.sum({0, 1});
  return {dxp, dR, dbh};
}

}  // namespace

TORCH_LIBRARY(cellsearch_kernels, m) {
  m.def("gru_forward(Tensor xp, Tensor R, Tensor bh, int gemm) -> Tensor[]", &gru_forward);
  m.def("gru_backward(Tensor dy, Tensor y, Tensor gates, Tensor hn, Tensor R, int gemm) -> Tensor[]",
        &gru_backward);
  m.def("info() -> str", &info);
  m.def("recurrent_product(Tensor A, Tensor W, Tensor C, int backend, int repeats) -> Tensor", &recurrent_product);
  m.def("lstm_family_forward(Tensor xp, Tensor R, Tensor peep, bool use_peep, bool coupled, int gemm) -> Tensor[]",
        &forward);
  m.def("lstm_family_backward(Tensor dy, Tensor y, Tensor c, Tensor tc, Tensor gates, Tensor R, "
        "Tensor peep, bool use_peep, bool coupled, int gemm) -> Tensor[]",
        &backward);
}
