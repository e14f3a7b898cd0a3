// norm.cu: RMSNorm forward and backward, and the column sums (dw of the
// norm, dbias) done as a two-pass reduction over chunks of rows: no atomics,
// the same result on every run.
#include "common.cuh"

// RMSNorm: one warp per row, 8 rows per 256-thread block.
// out = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps).
KERNEL void rmsnorm_fwd(float* out, float* rstd, const float* x, const float* w, int rows, int dim, float eps) {
  const int lane = tid_x() % 32;
  const i64 r = (i64)ctaid_x() * (ntid_x() / 32) + tid_x() / 32;
  if (r >= rows) return;  // the whole warp leaves together
  const float* xr = x + r * dim;
  float ss = 0.f;
  for (int j = lane; j < dim; j += 32) ss += xr[j] * xr[j];
  ss = warp_sum(ss);
  float s = (float)(1.0 / __builtin_sqrt((double)(ss / (float)dim + eps)));
  if (lane == 0) rstd[r] = s;
  float* o = out + r * dim;
  for (int j = lane; j < dim; j += 32) o[j] = xr[j] * s * w[j];
}

// RMSNormBackward, the dx part: dx += s*g*w - s^3 (sum g*w*x)/dim * x.
KERNEL void rmsnorm_bwd_dx(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int rows,
                           int dim) {
  const int lane = tid_x() % 32;
  const i64 r = (i64)ctaid_x() * (ntid_x() / 32) + tid_x() / 32;
  if (r >= rows) return;
  const float *xr = x + r * dim, *gr = dout + r * dim;
  float dot = 0.f;
  for (int j = lane; j < dim; j += 32) dot += gr[j] * w[j] * xr[j];
  dot = warp_sum(dot);
  const float s = rstd[r];
  const float c = s * s * s * dot / (float)dim;
  float* d = dx + r * dim;
  for (int j = lane; j < dim; j += 32) d[j] += s * gr[j] * w[j] - c * xr[j];
}

// colsum_partial: partial[chunk][j] = sum over the rows of the chunk of
// a[r][j] (* b[r][j] when b) (* s[r] when s). Block 32 x 8, grid
// (ceil(cols/32), chunks).
KERNEL void colsum_partial(float* partial, const float* a, const float* b, const float* s, int rows, int cols,
                           int chunk) {
  SHARED float sh[8][33];
  const int tx = tid_x(), ty = tid_y();
  const int j = ctaid_x() * 32 + tx;
  const int r0 = ctaid_y() * chunk, r1 = imin(r0 + chunk, rows);
  float acc = 0.f;
  if (j < cols) {
    for (int r = r0 + ty; r < r1; r += 8) {
      i64 o = (i64)r * cols + j;
      float v = a[o];
      if (b) v *= b[o];
      if (s) v *= s[r];
      acc += v;
    }
  }
  sh[ty][tx] = acc;
  sync_block();
  if (ty == 0 && j < cols) {
    float t = 0.f;
    for (int k = 0; k < 8; k++) t += sh[k][tx];
    partial[(i64)ctaid_y() * cols + j] = t;
  }
}

// colsum_finish: dst[j] += sum over chunks of partial[c][j].
KERNEL void colsum_finish(float* dst, const float* partial, int chunks, int cols) {
  GRID_STRIDE(j, cols) {
    float t = 0.f;
    for (int c = 0; c < chunks; c++) t += partial[(i64)c * cols + j];
    dst[j] += t;
  }
}
