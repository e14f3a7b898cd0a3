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
KERNEL void adamw(float* p, const float* g, float* m, float* v, i64 n, float beta1, float beta2, float eps,
                  float decay, float step, float sqrtbc2, float gscale) {
  GRID_STRIDE(i, n) {
    float gi = g[i] * gscale;
    float mi = beta1 * m[i] + (1.f - beta1) * gi;
    float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = __builtin_sqrtf(vi) / sqrtbc2 + eps;
    p[i] = p[i] * decay - step * mi / denom;
  }
}

// cast_f32_bf16 rounds to nearest even; NaN stays a (quiet) NaN.
KERNEL void cast_f32_bf16(u16* out, const float* in, i64 n) {
  GRID_STRIDE(i, n) {
    float f = in[i];
    u32 b = __builtin_bit_cast(u32, f);
    u16 r;
    if ((b & 0x7fffffffu) > 0x7f800000u) {
      r = (u16)((b >> 16) | 0x40u);
    } else {
      r = (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
    out[i] = r;
  }
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
