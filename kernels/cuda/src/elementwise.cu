// elementwise.cu: the memory-bound ops, one thread per element (grid-stride).
#include "common.cuh"

// Add: out = a + b (out may alias a).
KERNEL void add_f32(float* out, const float* a, const float* b, i64 n) {
  GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

// Scale: x *= s.
KERNEL void scale_f32(float* x, float s, i64 n) {
  GRID_STRIDE(i, n) x[i] *= s;
}

// SwiGLU: out = silu(g) * u = g / (1 + e^-g) * u.
KERNEL void swiglu_fwd(float* out, const float* g, const float* u, i64 n) {
  GRID_STRIDE(i, n) {
    float gv = g[i];
    out[i] = gv / (1.f + exp_(-gv)) * u[i];
  }
}

// SwiGLUBackward writes dg and du.
KERNEL void swiglu_bwd(float* dg, float* du, const float* dout, const float* g, const float* u, i64 n) {
  GRID_STRIDE(i, n) {
    float gv = g[i], d = dout[i];
    float sig = 1.f / (1.f + exp_(-gv));
    float silu = gv * sig;
    du[i] = d * silu;
    dg[i] = d * u[i] * sig * (1.f + gv * (1.f - sig));
  }
}

// AddBias: c[r][j] += bias[j].
KERNEL void add_bias(float* c, const float* bias, i64 rows, int cols) {
  GRID_STRIDE(i, rows * cols) c[i] += bias[i % cols];
}

// Embedding gathers rows of table: out[t] = table[ids[t]].
KERNEL void embedding_fwd(float* out, const float* table, const int* ids, i64 n, int dim) {
  GRID_STRIDE(i, n * dim) {
    i64 t = i / dim;
    int j = (int)(i - t * dim);
    out[i] = table[(i64)ids[t] * dim + j];
  }
}

// EmbeddingBackward scatters rows back: dtable[ids[t]] += dout[t]. Repeated
// ids meet in atomic adds.
KERNEL void embedding_bwd(float* dtable, const float* dout, const int* ids, i64 n, int dim) {
  GRID_STRIDE(i, n * dim) {
    i64 t = i / dim;
    int j = (int)(i - t * dim);
    atomic_add(&dtable[(i64)ids[t] * dim + j], dout[i]);
  }
}

// AdamW as kernels/cpu's AdamWStep; decay = 1 - lr*wd, step = lr/bc1 and
// sqrtbc2 = sqrt(bc2) come from the host, computed as the CPU computes them.
// adamw_at updates element i of p, m and v and returns the new p[i].
DEV float adamw_at(float* p, const float* g, float* m, float* v, i64 i, float beta1, float beta2, float eps,
                   float decay, float step, float sqrtbc2, float gscale) {
  float gi = g[i] * gscale;
  float mi = beta1 * m[i] + (1.f - beta1) * gi;
  float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  float denom = __builtin_sqrtf(vi) / sqrtbc2 + eps;
  float pi = p[i] * decay - step * mi / denom;
  p[i] = pi;
  return pi;
}

KERNEL void adamw(float* p, const float* g, float* m, float* v, i64 n, float beta1, float beta2, float eps,
                  float decay, float step, float sqrtbc2, float gscale) {
  GRID_STRIDE(i, n) adamw_at(p, g, m, v, i, beta1, beta2, eps, decay, step, sqrtbc2, gscale);
}

// adamw_bf16 is adamw that also rounds the new p[i] of every i >= from into
// p16[i - from] as cast_f32_bf16 does: a weight's bf16 copy made in the
// update instead of by a second pass over p.
KERNEL void adamw_bf16(float* p, const float* g, float* m, float* v, i64 n, float beta1, float beta2, float eps,
                       float decay, float step, float sqrtbc2, float gscale, u16* p16, i64 from) {
  GRID_STRIDE(i, n) {
    float pi = adamw_at(p, g, m, v, i, beta1, beta2, eps, decay, step, sqrtbc2, gscale);
    if (i >= from) p16[i - from] = (u16)bf16_rne(pi);
  }
}

// cast_f32_bf16 rounds to nearest even; NaN stays a (quiet) NaN.
KERNEL void cast_f32_bf16(u16* out, const float* in, i64 n) {
  GRID_STRIDE(i, n) out[i] = (u16)bf16_rne(in[i]);
}

// cast_bf16_f32 widens exactly.
KERNEL void cast_bf16_f32(float* out, const u16* in, i64 n) {
  GRID_STRIDE(i, n) out[i] = __builtin_bit_cast(float, (u32)in[i] << 16);
}

// RoPE in the rotate_half layout: pairs (k, k + hd/2) of every head of row
// r rotate by the angle of position pos[r]; sign -1 rotates back.
KERNEL void rope(float* x, const int* pos, const float* cosT, const float* sinT, int rows, int heads, int hd,
                 float sign) {
  const int half = hd / 2;
  GRID_STRIDE(i, (i64)rows * heads * half) {
    i64 rh = i / half;
    int k = (int)(i - rh * half);
    i64 r = rh / heads;
    float* v = x + rh * hd;
    i64 p = pos[r];
    float c = cosT[p * half + k], s = sinT[p * half + k] * sign;
    float x1 = v[k], x2 = v[k + half];
    v[k] = x1 * c - x2 * s;
    v[k + half] = x2 * c + x1 * s;
  }
}
