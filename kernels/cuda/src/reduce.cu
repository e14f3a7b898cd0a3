// reduce.cu: Sum and SumSquares in float64, in two deterministic passes.
#include "common.cuh"

// reduce_partial: partial[block] = sum of x[i] (or x[i]^2) over the block's
// grid-stride share. Blocks of 256 threads.
KERNEL void reduce_partial(double* partial, const float* x, i64 n, int squares) {
  SHARED double sh[256];
  double acc = 0.0;
  GRID_STRIDE(i, n) {
    double v = (double)x[i];
    acc += squares ? v * v : v;
  }
  const int t = tid_x();
  sh[t] = acc;
  sync_block();
  for (int s = 128; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    sync_block();
  }
  if (t == 0) partial[ctaid_x()] = sh[0];
}

// reduce_finish: out[0] = sum of partial[0..n). One block of 256 threads.
KERNEL void reduce_finish(double* out, const double* partial, int n) {
  SHARED double sh[256];
  const int t = tid_x();
  double acc = 0.0;
  for (int i = t; i < n; i += 256) acc += partial[i];
  sh[t] = acc;
  sync_block();
  for (int s = 128; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    sync_block();
  }
  if (t == 0) out[0] = sh[0];
}
