// loss.cu: weighted cross-entropy over a large vocabulary, one block per
// row: a pass for the maximum, the argmax and the sum of exponentials
// (online, rescaling when the maximum grows), and with grad a second pass
// that overwrites the logits with their gradient.
#include "common.cuh"

KERNEL void cross_entropy(float* loss, float* correct, float* logits, const int* targets, const float* weights,
                          int rows, int vocab, float gscale, int grad) {
  SHARED float shm[32], shs[32];
  SHARED int sha[32];
  const int r = ctaid_x();
  if (r >= rows) return;
  const int tid = tid_x(), nt = ntid_x();
  float* x = logits + (i64)r * vocab;
  const int t = targets[r];
  if (t < 0) {
    if (tid == 0) loss[r] = 0.f, correct[r] = 0.f;
    if (grad)
      for (int j = tid; j < vocab; j += nt) x[j] = 0.f;
    return;  // the whole block leaves together
  }
  // Per thread: running max m, sum s of e^(v-m), first index of the max.
  float m = NEG_INF, s = 0.f;
  int am = 0x7fffffff;
  for (int j = tid; j < vocab; j += nt) {
    float v = x[j];
    if (v > m) {
      s = s * exp_(m - v) + 1.f;
      m = v;
      am = j;
    } else if (m != NEG_INF) {
      s += exp_(v - m);
    }
  }
  // Warp, then block: the larger max wins, ties go to the smaller index.
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = shfl_xor(m, o), s2 = shfl_xor(s, o);
    int a2 = __builtin_bit_cast(int, shfl_xor(__builtin_bit_cast(float, am), o));
    float mm = fmaxf_(m, m2);
    s = (m == NEG_INF ? 0.f : s * exp_(m - mm)) + (m2 == NEG_INF ? 0.f : s2 * exp_(m2 - mm));
    if (m2 > m || (m2 == m && a2 < am)) am = a2;
    m = mm;
  }
  const int lane = tid % 32, w = tid / 32, nw = nt / 32;
  if (lane == 0) shm[w] = m, shs[w] = s, sha[w] = am;
  sync_block();
  float M = NEG_INF, S = 0.f;
  int A = 0x7fffffff;
  for (int k = 0; k < nw; k++) {
    float mk = shm[k];
    if (mk > M || (mk == M && sha[k] < A)) A = sha[k];
    M = fmaxf_(M, mk);
  }
  for (int k = 0; k < nw; k++)
    if (shm[k] != NEG_INF) S += shs[k] * exp_(shm[k] - M);
  const float lse = M + log_(S);
  const float wr = weights[r];
  if (tid == 0) {
    loss[r] = wr * (lse - x[t]);
    correct[r] = A == t ? 1.f : 0.f;
  }
  if (!grad) return;
  sync_block();  // x[t] is read above before anyone overwrites it
  const float sc = wr * gscale;
  for (int j = tid; j < vocab; j += nt) {
    float gv = exp_(x[j] - lse) * sc;
    if (j == t) gv -= sc;
    x[j] = gv;
  }
}

// The LM head fused with the loss (HeadLoss) sees the logits a chunk of
// columns [c0, c0+cols) at a time. ce_chunk_stats merges a chunk into each
// row's running max, sum of exponentials (relative to the max), argmax
// (ties to the smaller index) and target logit; ce_finish turns them into
// loss, correct and lse; ce_chunk_grad overwrites a chunk with its gradient.
KERNEL void ce_chunk_stats(float* ms, float* ss, int* args, float* tls, const float* logits, const int* targets,
                           int cols, int c0, int first) {
  SHARED float shm[32], shs[32];
  SHARED int sha[32];
  const int r = ctaid_x(), t = targets[r];
  if (t < 0) return;
  const int tid = tid_x(), nt = ntid_x();
  const float* x = logits + (i64)r * cols;
  float m = NEG_INF, s = 0.f;
  int am = 0x7fffffff;
  for (int j = tid; j < cols; j += nt) {
    const float v = x[j];
    if (v > m) {
      s = s * exp_(m - v) + 1.f;
      m = v;
      am = c0 + j;
    } else if (m != NEG_INF) {
      s += exp_(v - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = shfl_xor(m, o), s2 = shfl_xor(s, o);
    const int a2 = __builtin_bit_cast(int, shfl_xor(__builtin_bit_cast(float, am), o));
    const float mm = fmaxf_(m, m2);
    s = (m == NEG_INF ? 0.f : s * exp_(m - mm)) + (m2 == NEG_INF ? 0.f : s2 * exp_(m2 - mm));
    if (m2 > m || (m2 == m && a2 < am)) am = a2;
    m = mm;
  }
  const int lane = tid % 32, w = tid / 32, nw = nt / 32;
  if (lane == 0) shm[w] = m, shs[w] = s, sha[w] = am;
  sync_block();
  if (tid != 0) return;
  float M = NEG_INF, S = 0.f;
  int A = 0x7fffffff;
  for (int k = 0; k < nw; k++) {
    if (shm[k] > M || (shm[k] == M && sha[k] < A)) A = sha[k];
    M = fmaxf_(M, shm[k]);
  }
  for (int k = 0; k < nw; k++)
    if (shm[k] != NEG_INF) S += shs[k] * exp_(shm[k] - M);
  if (first) {
    ms[r] = M, ss[r] = S, args[r] = A;
  } else {
    const float mo = ms[r], so = ss[r], mm = fmaxf_(mo, M);
    ss[r] = (mo == NEG_INF ? 0.f : so * exp_(mo - mm)) + (M == NEG_INF ? 0.f : S * exp_(M - mm));
    if (M > mo) args[r] = A;  // earlier chunks hold the smaller indices
    ms[r] = mm;
  }
  if (t >= c0 && t < c0 + cols) tls[r] = x[t - c0];
}

KERNEL void ce_finish(float* loss, float* correct, float* lse, const float* ms, const float* ss, const int* args,
                      const float* tls, const int* targets, const float* weights, i64 rows) {
  GRID_STRIDE(r, rows) {
    const int t = targets[r];
    if (t < 0) {
      loss[r] = 0.f, correct[r] = 0.f, lse[r] = 0.f;
      continue;
    }
    const float L = ms[r] + log_(ss[r]);
    loss[r] = weights[r] * (L - tls[r]);
    correct[r] = args[r] == t ? 1.f : 0.f;
    lse[r] = L;
  }
}

KERNEL void ce_chunk_grad(float* logits, const float* lse, const int* targets, const float* weights, int cols, int c0,
                          float gscale) {
  const int r = ctaid_x(), t = targets[r];
  float* x = logits + (i64)r * cols;
  const float sc = t < 0 ? 0.f : weights[r] * gscale, L = lse[r];
  for (int j = tid_x(); j < cols; j += ntid_x()) {
    float g = t < 0 ? 0.f : exp_(x[j] - L) * sc;
    if (c0 + j == t) g -= sc;
    x[j] = g;
  }
}
