// Fused GroupNorm + per-sample affine + optional SiLU for channels-last CPU tensors (bf16 or fp32 storage).
//
// Layout: x is [N, S, C] contiguous (a channels-last [N, C, H, W] seen as N samples of S = H*W pixels of C values).
// Forward:  z = (x - mean[n, g]) * rstd[n, g] * A[n, c] + B[n, c];  y = silu(z) if act else z.
// A and B are [N, C] fp32 (gamma * (1 + scale) and beta * (1 + scale) + shift for scale-shift norms), so autograd
// maps their gradients back to gamma, beta, scale and shift. All arithmetic is fp32; only storage may be bf16.
// Statistics are per channel about a per-channel shift (the sample's first pixel), combined per group with the
// parallel-variance formula, so they stay accurate when |mean| >> std.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, int64_t i, float f) { p[i] = f; }
inline void store(uint16_t* p, int64_t i, float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i] = static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

// e^x to ~2 ulp for |x| < 87, saturating beyond. Plain arithmetic (rounding by the 1.5 * 2^23 trick instead of
// floor, which GCC does not vectorise) so the loops that call it compile to SIMD code.
__attribute__((always_inline)) inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float t = x * 1.44269504f + 12582912.0f;  // round(x / ln 2) sits in t's low mantissa bits
  float n = t - 12582912.0f;
  int32_t ti;
  std::memcpy(&ti, &t, 4);
  float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.0083333338f +
            r * 0.0013888889f)))));
  int32_t bits = (ti - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

__attribute__((always_inline)) inline float sigmoid(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

constexpr int64_t kBlock = 64;  // pixels summed in fp32 before folding into fp64

// Per-channel sums of one sample over its S pixels: `values(s, a1, a2)` adds pixel s's two terms per channel into
// the accumulators a1[c], a2[c]; they are summed in fp32 inside blocks of kBlock pixels, in fp64 (s1, s2) across.
template <typename F>
void channel_sums(int64_t S, int64_t C, F values, std::vector<double>& s1, std::vector<double>& s2) {
  std::vector<float> b1(C), b2(C);
  s1.assign(C, 0.0);
  s2.assign(C, 0.0);
  for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
    std::fill(b1.begin(), b1.end(), 0.0f);
    std::fill(b2.begin(), b2.end(), 0.0f);
    float* __restrict a1 = b1.data();
    float* __restrict a2 = b2.data();
    for (int64_t s = s0; s < std::min(S, s0 + kBlock); ++s) values(s, a1, a2);
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += a1[c];
      s2[c] += a2[c];
    }
  }
}

// Per-channel coefficients of sample n: its group's mean and a = rstd * A, so that z = (x - mean) * a + B.
// Subtracting the mean before scaling keeps z exact when |mean| >> std (x * a + (B - mean * a) would not).
void channel_coefficients(int64_t n, int64_t C, int64_t D, int64_t G, const float* mp, const float* rp,
                          const float* Ap, float* mean_c, float* a_c) {
  for (int64_t c = 0; c < C; ++c) {
    mean_c[c] = mp[n * G + c / D];
    a_c[c] = rp[n * G + c / D] * Ap[n * C + c];
  }
}

template <typename T, bool act>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, int64_t G,
                                     double eps) {
  const int64_t N = x.size(0), S = x.size(1), C = x.size(2), D = C / G, NC = N * C;
  auto y = at::empty_like(x);
  auto mean = at::empty({N, G}, x.options().dtype(at::kFloat));
  auto rstd = at::empty({N, G}, x.options().dtype(at::kFloat));
  auto coef = at::empty({2, N, C}, x.options().dtype(at::kFloat));  // per-channel mean and a
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  const float *Ap = A.data_ptr<float>(), *Bp = B.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>(), *cp = coef.data_ptr<float>();

  auto apply_rows = [&](int64_t i0, int64_t i1) {  // rows i = n * S + s
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t off = (i / S) * C;
      const float *__restrict m = cp + off, *__restrict a = cp + NC + off, *__restrict b = Bp + off;
      const T* row = xp + i * C;
      T* out = yp + i * C;
      for (int64_t c = 0; c < C; ++c) {
        float z = (load(row, c) - m[c]) * a[c] + b[c];
        if constexpr (act) z *= sigmoid(z);
        store(out, c, z);
      }
    }
  };
  // With a sample per thread or more, each thread writes its samples' outputs right after their statistics, while
  // the sample is still in cache; otherwise a second parallel pass over all rows.
  const bool per_sample = N >= at::get_num_threads();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<double> s1, s2;
    std::vector<float> shift(C);
    for (int64_t n = n0; n < n1; ++n) {
      const T* xn = xp + n * S * C;
      for (int64_t c = 0; c < C; ++c) shift[c] = load(xn, c);
      const float* __restrict k = shift.data();
      channel_sums(S, C, [&](int64_t s, float* __restrict a1, float* __restrict a2) {
        const T* row = xn + s * C;
        for (int64_t c = 0; c < C; ++c) {
          float v = load(row, c) - k[c];
          a1[c] += v;
          a2[c] += v * v;
        }
      }, s1, s2);
      for (int64_t g = 0; g < G; ++g) {
        double gmean = 0.0, m2 = 0.0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) gmean += k[c] + s1[c] / S;
        gmean /= D;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          double cmean = k[c] + s1[c] / S;
          m2 += (s2[c] - s1[c] * s1[c] / S) + S * (cmean - gmean) * (cmean - gmean);
        }
        mp[n * G + g] = static_cast<float>(gmean);
        rp[n * G + g] = static_cast<float>(1.0 / std::sqrt(std::max(m2 / (S * D), 0.0) + eps));
      }
      channel_coefficients(n, C, D, G, mp, rp, Ap, cp + n * C, cp + NC + n * C);
      if (per_sample) apply_rows(n * S, (n + 1) * S);
    }
  });

  if (!per_sample) at::parallel_for(0, N * S, 256, apply_rows);
  return {y, mean, rstd};
}

// The gradient reaching z: through SiLU when act.
template <bool act>
__attribute__((always_inline)) inline float grad_z(float g, float z) {
  if constexpr (!act) return g;
  float sg = sigmoid(z);
  return g * sg * (1.0f + z * (1.0f - sg));
}

template <typename T, bool act>
std::vector<at::Tensor> backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                      const at::Tensor& rstd, const at::Tensor& A, const at::Tensor& B) {
  const int64_t N = x.size(0), S = x.size(1), C = x.size(2), G = mean.size(1), D = C / G, NC = N * C;
  auto dx = at::empty_like(x);
  auto dA = at::empty({N, C}, x.options().dtype(at::kFloat));
  auto dB = at::empty({N, C}, x.options().dtype(at::kFloat));
  // per channel: mean, a (z = (x - mean) * a + B), q, r (dx = dz * a + (x - mean) * q + r)
  auto coef = at::empty({4, N, C}, x.options().dtype(at::kFloat));
  const T *xp = reinterpret_cast<const T*>(x.data_ptr()), *dyp = reinterpret_cast<const T*>(dy.data_ptr());
  T* dxp = reinterpret_cast<T*>(dx.data_ptr());
  const float *Ap = A.data_ptr<float>(), *Bp = B.data_ptr<float>();
  const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dAp = dA.data_ptr<float>(), *dBp = dB.data_ptr<float>(), *cp = coef.data_ptr<float>();

  auto apply_rows = [&](int64_t i0, int64_t i1) {  // rows i = n * S + s
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t off = (i / S) * C;
      const float *__restrict m = cp + off, *__restrict a = cp + NC + off, *__restrict b = Bp + off;
      const float *__restrict q = cp + 2 * NC + off, *__restrict r = cp + 3 * NC + off;
      const T *row = xp + i * C, *grow = dyp + i * C;
      T* out = dxp + i * C;
      for (int64_t c = 0; c < C; ++c) {
        float xc = load(row, c) - m[c];
        float dz = grad_z<act>(load(grow, c), xc * a[c] + b[c]);
        store(out, c, dz * a[c] + xc * q[c] + r[c]);
      }
    }
  };
  const bool per_sample = N >= at::get_num_threads();  // as in forward
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<double> s1, s2;
    for (int64_t n = n0; n < n1; ++n) {
      channel_coefficients(n, C, D, G, mp, rp, Ap, cp + n * C, cp + NC + n * C);
      const float *__restrict m = cp + n * C, *__restrict a = cp + NC + n * C, *__restrict b = Bp + n * C;
      const T *xn = xp + n * S * C, *dyn = dyp + n * S * C;
      // s1 = sum(dz), s2 = sum(dz * (x - mean))
      channel_sums(S, C, [&](int64_t s, float* __restrict a1, float* __restrict a2) {
        const T *row = xn + s * C, *grow = dyn + s * C;
        for (int64_t c = 0; c < C; ++c) {
          float xc = load(row, c) - m[c];
          float dz = grad_z<act>(load(grow, c), xc * a[c] + b[c]);
          a1[c] += dz;
          a2[c] += dz * xc;
        }
      }, s1, s2);
      float *q = cp + 2 * NC + n * C, *r = cp + 3 * NC + n * C;
      for (int64_t g = 0; g < G; ++g) {
        const double rs = rp[n * G + g];
        double m1 = 0.0, m2 = 0.0;  // group means of dxhat and of dxhat * xhat, with dxhat = dz * A
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          dBp[n * C + c] = static_cast<float>(s1[c]);
          dAp[n * C + c] = static_cast<float>(rs * s2[c]);
          m1 += Ap[n * C + c] * s1[c];
          m2 += Ap[n * C + c] * rs * s2[c];
        }
        m1 /= S * D;
        m2 /= S * D;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {  // dx = rstd * (dxhat - m1 - xhat * m2)
          q[c] = static_cast<float>(-rs * rs * m2);
          r[c] = static_cast<float>(-rs * m1);
        }
      }
      if (per_sample) apply_rows(n * S, (n + 1) * S);
    }
  });

  if (!per_sample) at::parallel_for(0, N * S, 256, apply_rows);
  return {dx, dA, dB};
}

void check(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "x must be a contiguous CPU [N, S, C]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  TORCH_CHECK(A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat && A.is_contiguous() &&
              B.is_contiguous() && A.sizes() == B.sizes() && A.size(0) == x.size(0) && A.size(1) == x.size(2),
              "A and B must be contiguous float32 [N, C]");
}

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, int64_t groups,
                                double eps, bool act) {
  check(x, A, B);
  TORCH_CHECK(x.size(2) % groups == 0, "channels must be divisible by groups");
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (act) return bf16 ? forward_impl<uint16_t, true>(x, A, B, groups, eps) : forward_impl<float, true>(x, A, B, groups, eps);
  return bf16 ? forward_impl<uint16_t, false>(x, A, B, groups, eps) : forward_impl<float, false>(x, A, B, groups, eps);
}

std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& A, const at::Tensor& B, bool act) {
  check(x, A, B);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() && dy.is_contiguous(),
              "dy must match x");
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (act) return bf16 ? backward_impl<uint16_t, true>(dy, x, mean, rstd, A, B)
                       : backward_impl<float, true>(dy, x, mean, rstd, A, B);
  return bf16 ? backward_impl<uint16_t, false>(dy, x, mean, rstd, A, B)
              : backward_impl<float, false>(dy, x, mean, rstd, A, B);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused GroupNorm + affine + SiLU forward: (y, mean, rstd)");
  m.def("backward", &backward, "its backward: (dx, dA, dB)");
}
