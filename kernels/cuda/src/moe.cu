// moe.cu: mixture-of-experts routing (kernels.Backend's RouterTopK,
// RouterBackward, MoEDispatch, MoECombine, MoECombineBackward). A row's kout
// assignments are its k experts and, with a shared expert (slog not null),
// the shared expert: group `experts`, weight sigmoid(slog[r]).
#include "common.cuh"

// router_topk: one thread per row (experts and k are small). Softmax over
// the first `experts` logits, top-k by repeated selection (ties: the lower
// index), optional renormalisation.
KERNEL void router_topk(float* topw, float* probs, int* topidx, const float* logits, const float* slog, int rows,
                        int experts, int k, int renorm) {
  const int kout = k + (slog ? 1 : 0);
  GRID_STRIDE(r, rows) {
    const float* x = logits + r * experts;
    float* p = probs + r * experts;
    float mx = x[0];
    for (int e = 1; e < experts; e++) mx = fmaxf_(mx, x[e]);
    float sum = 0.f;
    for (int e = 0; e < experts; e++) {
      p[e] = exp_(x[e] - mx);
      sum += p[e];
    }
    float inv = 1.f / sum;
    for (int e = 0; e < experts; e++) p[e] *= inv;
    float* w = topw + r * kout;
    int* idx = topidx + r * kout;
    float tot = 0.f;
    for (int j = 0; j < k; j++) {
      int best = -1;
      for (int e = 0; e < experts; e++) {
        bool taken = false;
        for (int i = 0; i < j; i++) taken = taken || idx[i] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;
      }
      idx[j] = best;
      w[j] = p[best];
      tot += p[best];
    }
    if (renorm)
      for (int j = 0; j < k; j++) w[j] /= tot;
    if (slog) {
      idx[k] = experts;
      w[k] = 1.f / (1.f + exp_(-slog[r]));
    }
  }
}

// router_bwd: one thread per row; the row of dlogits holds d(probs) first.
KERNEL void router_bwd(float* dlogits, float* dslog, const float* dtopw, const float* topw, const float* probs,
                       const int* topidx, const float* aux, int rows, int experts, int k, int renorm) {
  const int kout = k + (dslog ? 1 : 0);
  GRID_STRIDE(r, rows) {
    float* d = dlogits + r * experts;
    const float* p = probs + r * experts;
    const float* dw = dtopw + r * kout;
    const float* w = topw + r * kout;
    const int* idx = topidx + r * kout;
    for (int e = 0; e < experts; e++) d[e] = aux ? aux[e] : 0.f;
    if (renorm) {
      float dot = 0.f, s = 0.f;
      for (int j = 0; j < k; j++) {
        dot += dw[j] * w[j];
        s += p[idx[j]];
      }
      for (int j = 0; j < k; j++) d[idx[j]] += (dw[j] - dot) / s;
    } else {
      for (int j = 0; j < k; j++) d[idx[j]] += dw[j];
    }
    float dot = 0.f;
    for (int e = 0; e < experts; e++) dot += d[e] * p[e];
    for (int e = 0; e < experts; e++) d[e] = p[e] * (d[e] - dot);
    if (dslog) {
      float s = w[k];
      dslog[r] = dw[k] * s * (1.f - s);
    }
  }
}

// moe_dispatch: one block; thread g counts and then places group g's
// assignments in order (a stable counting sort, deterministic).
KERNEL void moe_dispatch(int* offsets, int* slotrow, int* slotof, const int* topidx, int rows, int kout, int groups) {
  const int n = rows * kout;
  for (int g = tid_x(); g < groups; g += ntid_x()) {
    int c = 0;
    for (int a = 0; a < n; a++) c += topidx[a] == g;
    offsets[g + 1] = c;
  }
  sync_block();
  if (tid_x() == 0) {
    offsets[0] = 0;
    for (int g = 0; g < groups; g++) offsets[g + 1] += offsets[g];
  }
  sync_block();
  for (int g = tid_x(); g < groups; g += ntid_x()) {
    int s = offsets[g];
    for (int a = 0; a < n; a++) {
      if (topidx[a] == g) {
        slotrow[s] = a / kout;
        slotof[a] = s;
        s++;
      }
    }
  }
}

// moe_combine: out[r] (+)= sum_j w[a] y[slotof[a]], a = r*kout+j; w may be
// null (weights 1).
KERNEL void moe_combine(float* out, const float* y, const float* w, const int* slotof, i64 rows, int kout, int dim,
                        int accumulate) {
  GRID_STRIDE(i, rows * dim) {
    i64 r = i / dim;
    int d = (int)(i - r * dim);
    float acc = accumulate ? out[i] : 0.f;
    for (int j = 0; j < kout; j++) {
      i64 a = r * kout + j;
      float v = y[(i64)slotof[a] * dim + d];
      acc += w ? w[a] * v : v;
    }
    out[i] = acc;
  }
}

// moe_combine_bwd_dy: dy[slotof[a]] = w[a] dout[r].
KERNEL void moe_combine_bwd_dy(float* dy, const float* dout, const float* w, const int* slotof, i64 rows, int kout,
                               int dim) {
  GRID_STRIDE(i, rows * kout * dim) {
    i64 a = i / dim;
    int d = (int)(i - a * dim);
    dy[(i64)slotof[a] * dim + d] = w[a] * dout[(a / kout) * dim + d];
  }
}

// moe_combine_bwd_dw: dw[a] = dout[r] . y[slotof[a]], one warp per
// assignment (blocks of 32 x 8).
KERNEL void moe_combine_bwd_dw(float* dw, const float* dout, const float* y, const int* slotof, i64 assignments,
                               int kout, int dim) {
  const int lane = tid_x();
  for (i64 a = (i64)ctaid_x() * ntid_y() + tid_y(); a < assignments; a += (i64)nctaid_x() * ntid_y()) {
    const float* g = dout + (a / kout) * dim;
    const float* ys = y + (i64)slotof[a] * dim;
    float s = 0.f;
    for (int d = lane; d < dim; d += 32) s += g[d] * ys[d];
    s = warp_sum(s);
    if (lane == 0) dw[a] = s;
  }
}
