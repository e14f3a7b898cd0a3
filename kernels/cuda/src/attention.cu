// attention.cu: attention under the visibility rule of kernels/visibility.go,
// evaluated per (query, key) pair inside the kernels: no L x L mask and no
// L x L score matrix in memory.
//
// A team of T threads (T = 1, 2, 4, 8) owns one query (forward, dq) or one
// key (dk, dv); each thread holds 32 of its head dimensions in registers
// (head_dim <= 32*T, padded with zeros), and a dot product is the team's
// partial sums added with T-lane shuffles. Blocks of 128 threads stage tiles
// of keys (or queries) in shared memory, each row split into T segments of
// 32 floats padded to 36 so that the teams' 16-byte loads do not collide in
// the banks.
//
// Forward: online softmax over key tiles (FlashAttention); it writes lse per
// (row, query, head) at (b*Lq+i)*heads+h, as kernels/cpu does. Backward
// (FlashAttention-2): D = rowsum(dout*out); dq per query over keys; dk, dv
// per key over queries, per query head into partial buffers that a last
// kernel sums over the GQA group.
#include "common.cuh"
#include "visibility.cuh"

#define NT 128
#define DT 32
#define SEG 36

typedef float f4 __attribute__((ext_vector_type(4)));

// dot32 is the dot product of 32 registers with 32 floats of shared memory.
DEV float dot32(const float* r, const float* s) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll
  for (int e = 0; e < DT; e += 4) {
    f4 k = *(const f4*)(s + e);
    a0 += r[e] * k.x;
    a1 += r[e + 1] * k.y;
    a2 += r[e + 2] * k.z;
    a3 += r[e + 3] * k.w;
  }
  return (a0 + a1) + (a2 + a3);
}

// axpy32: acc += a * s over 32 values.
DEV void axpy32(float* acc, float a, const float* s) {
#pragma unroll
  for (int e = 0; e < DT; e += 4) {
    f4 k = *(const f4*)(s + e);
    acc[e] += a * k.x;
    acc[e + 1] += a * k.y;
    acc[e + 2] += a * k.z;
    acc[e + 3] += a * k.w;
  }
}

template <int T>
DEV float team_sum(float v) {
#pragma unroll
  for (int o = 1; o < T; o <<= 1) v += shfl_xor(v, o);
  return v;
}

// load_rows stages rows [r0, r0+BR) of src (row stride ld floats, hd used,
// rows >= n are zero) into dst in the padded segment layout.
template <int T, int BR>
DEV void load_rows(float* dst, const float* src, i64 ld, int r0, int n, int hd) {
  constexpr int W = T * DT;
#pragma unroll 1
  for (int idx = tid_x(); idx < BR * W; idx += NT) {
    const int rr = idx / W, d = idx - rr * W, r = r0 + rr;
    dst[rr * (T * SEG) + (d / DT) * SEG + d % DT] = (r < n && d < hd) ? src[(i64)r * ld + d] : 0.f;
  }
}

// load_regs reads this thread's 32 dimensions of one row.
template <int T>
DEV void load_regs(float* r, const float* row, bool ok, int lane, int hd) {
#pragma unroll
  for (int e = 0; e < DT; e++) {
    const int d = lane * DT + e;
    r[e] = (ok && d < hd) ? row[d] : 0.f;
  }
}

template <int T>
DEV void attn_fwd(float* out, float* lse, const float* q, const float* k, const float* v, const int* docs, int Lq,
                  int Lk, int qoff, int kstride, int heads, int kvheads, int hd, float scale, int mode, float ratio,
                  u64 seed, int blk, int half, int docmask) {
  constexpr int QB = NT / T, BK = T == 8 ? 16 : 32, ROW = T * SEG;
  SHARED float ks[BK * ROW] __attribute__((aligned(16)));
  SHARED float vs[BK * ROW] __attribute__((aligned(16)));
  SHARED int kd[BK];
  const Vis vis = {mode, ratio, seed, blk, half};
  const int tid = tid_x(), lane = tid % T;
  const int b = ctaid_z(), h = ctaid_y();
  const int i = ctaid_x() * QB + tid / T;
  const bool valid = i < Lq;
  const int kvh = h / (heads / kvheads);
  const i64 qw = (i64)heads * hd, kw = (i64)kvheads * hd;
  float qr[DT], acc[DT];
  load_regs<T>(qr, q + ((i64)b * Lq + i) * qw + h * hd, valid, lane, hd);
#pragma unroll
  for (int e = 0; e < DT; e++) acc[e] = 0.f;
  const int qpos = qoff + i;
  const int qdoc = (docmask && valid) ? docs[(i64)b * kstride + qpos] : 0;
  // Keys past the last one any query of the block can see are skipped.
  const int qlast = qoff + imin((ctaid_x() + 1) * QB, Lq) - 1;
  int kend = Lk;
  if (mode == 0) kend = imin(qlast + 1, Lk);
  if (mode == 3) kend = imin((qlast / blk + 1) * blk, Lk);
  const float* kb = k + (i64)b * kstride * kw + kvh * hd;
  const float* vb = v + (i64)b * kstride * kw + kvh * hd;
  float m = NEG_INF, l = 0.f;
  for (int k0 = 0; k0 < kend; k0 += BK) {
    sync_block();
    load_rows<T, BK>(ks, kb, kw, k0, Lk, hd);
    load_rows<T, BK>(vs, vb, kw, k0, Lk, hd);
    if (docmask)
      for (int jj = tid; jj < BK; jj += NT) kd[jj] = k0 + jj < Lk ? docs[(i64)b * kstride + k0 + jj] : -1;
    sync_block();
    u32 vm = 0;
    if (valid)
#pragma unroll 1
      for (int jj = 0; jj < BK; jj++) {
        const int j = k0 + jj;
        if (j < kend && visible(vis, qpos, j) && (!docmask || kd[jj] == qdoc)) vm |= 1u << jj;
      }
    // Online softmax in groups of 8 keys: scores of a group in registers.
#pragma unroll 1
    for (int g0 = 0; g0 < BK; g0 += 8) {
      const u32 gm = (vm >> g0) & 0xffu;
      float sc[8];
      float tmax = NEG_INF;
#pragma unroll
      for (int jj = 0; jj < 8; jj++) {
        float s = team_sum<T>(dot32(qr, ks + (g0 + jj) * ROW + lane * SEG));
        s = ((gm >> jj) & 1u) ? s * scale : NEG_INF;
        sc[jj] = s;
        tmax = fmaxf_(tmax, s);
      }
      if (gm) {
        const float mnew = fmaxf_(m, tmax);
        const float alpha = exp_(m - mnew);
        l *= alpha;
#pragma unroll
        for (int e = 0; e < DT; e++) acc[e] *= alpha;
#pragma unroll
        for (int jj = 0; jj < 8; jj++) {
          const float p = exp_(sc[jj] - mnew);
          l += p;
          axpy32(acc, p, vs + (g0 + jj) * ROW + lane * SEG);
        }
        m = mnew;
      }
    }
  }
  if (!valid) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float* op = out + ((i64)b * Lq + i) * qw + h * hd;
#pragma unroll
  for (int e = 0; e < DT; e++) {
    const int d = lane * DT + e;
    if (d < hd) op[d] = acc[e] * inv;
  }
  if (lane == 0) lse[((i64)b * Lq + i) * heads + h] = l > 0.f ? m + log_(l) : 0.f;
}

template <int T>
DEV void attn_bwd_dq(float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse,
                     const float* Dr, const int* docs, int L, int heads, int kvheads, int hd, float scale, int mode,
                     float ratio, u64 seed, int blk, int half, int docmask) {
  constexpr int QB = NT / T, BK = T == 8 ? 16 : 32, ROW = T * SEG;
  SHARED float ks[BK * ROW] __attribute__((aligned(16)));
  SHARED float vs[BK * ROW] __attribute__((aligned(16)));
  SHARED int kd[BK];
  const Vis vis = {mode, ratio, seed, blk, half};
  const int tid = tid_x(), lane = tid % T;
  const int b = ctaid_z(), h = ctaid_y();
  const int i = ctaid_x() * QB + tid / T;
  const bool valid = i < L;
  const int kvh = h / (heads / kvheads);
  const i64 qw = (i64)heads * hd, kw = (i64)kvheads * hd;
  const i64 qrow = ((i64)b * L + i) * qw + h * hd;
  float qr[DT], dor[DT], dqa[DT];
  load_regs<T>(qr, q + qrow, valid, lane, hd);
  load_regs<T>(dor, dout + qrow, valid, lane, hd);
#pragma unroll
  for (int e = 0; e < DT; e++) dqa[e] = 0.f;
  const i64 li = ((i64)b * L + i) * heads + h;
  const float lsei = valid ? lse[li] : 0.f, Di = valid ? Dr[li] : 0.f;
  const int qdoc = (docmask && valid) ? docs[(i64)b * L + i] : 0;
  const int qlast = imin((ctaid_x() + 1) * QB, L) - 1;
  int kend = L;
  if (mode == 0) kend = qlast + 1;
  if (mode == 3) kend = imin((qlast / blk + 1) * blk, L);
  const float* kb = k + (i64)b * L * kw + kvh * hd;
  const float* vb = v + (i64)b * L * kw + kvh * hd;
  for (int k0 = 0; k0 < kend; k0 += BK) {
    sync_block();
    load_rows<T, BK>(ks, kb, kw, k0, L, hd);
    load_rows<T, BK>(vs, vb, kw, k0, L, hd);
    if (docmask)
      for (int jj = tid; jj < BK; jj += NT) kd[jj] = k0 + jj < L ? docs[(i64)b * L + k0 + jj] : -1;
    sync_block();
    u32 vm = 0;
    if (valid)
#pragma unroll 1
      for (int jj = 0; jj < BK; jj++) {
        const int j = k0 + jj;
        if (j < kend && visible(vis, i, j) && (!docmask || kd[jj] == qdoc)) vm |= 1u << jj;
      }
#pragma unroll 4
    for (int jj = 0; jj < BK; jj++) {
      const float* kt = ks + jj * ROW + lane * SEG;
      const float s = team_sum<T>(dot32(qr, kt));
      const float dp = team_sum<T>(dot32(dor, vs + jj * ROW + lane * SEG));
      const float p = ((vm >> jj) & 1u) ? exp_(s * scale - lsei) : 0.f;
      const float ds = p * (dp - Di) * scale;
      axpy32(dqa, ds, kt);
    }
  }
  if (!valid) return;
#pragma unroll
  for (int e = 0; e < DT; e++) {
    const int d = lane * DT + e;
    if (d < hd) dq[qrow + d] = dqa[e];
  }
}

template <int T>
DEV void attn_bwd_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                      const float* lse, const float* Dr, const int* docs, int L, int heads, int kvheads, int hd,
                      float scale, int mode, float ratio, u64 seed, int blk, int half, int docmask, i64 pstride) {
  constexpr int KB = NT / T, BQ = T == 8 ? 16 : 32, ROW = T * SEG;
  SHARED float qs[BQ * ROW] __attribute__((aligned(16)));
  SHARED float dos[BQ * ROW] __attribute__((aligned(16)));
  SHARED float ls[BQ], Ds[BQ];
  SHARED int qd[BQ];
  const Vis vis = {mode, ratio, seed, blk, half};
  const int tid = tid_x(), lane = tid % T;
  const int b = ctaid_z(), h = ctaid_y();
  const int j = ctaid_x() * KB + tid / T;
  const bool valid = j < L;
  const int group = heads / kvheads, kvh = h / group, hh = h % group;
  const i64 qw = (i64)heads * hd, kw = (i64)kvheads * hd;
  const i64 krow = ((i64)b * L + j) * kw + kvh * hd;
  float kr[DT], vr[DT], dka[DT], dva[DT];
  load_regs<T>(kr, k + krow, valid, lane, hd);
  load_regs<T>(vr, v + krow, valid, lane, hd);
#pragma unroll
  for (int e = 0; e < DT; e++) dka[e] = 0.f, dva[e] = 0.f;
  const int kdoc = (docmask && valid) ? docs[(i64)b * L + j] : 0;
  // Queries before the first one that can see any key of the block are skipped.
  const int kfirst = ctaid_x() * KB;
  int qstart = 0;
  if (mode == 0) qstart = kfirst;
  if (mode == 3) qstart = kfirst / blk * blk;
  const float* qb = q + (i64)b * L * qw + h * hd;
  const float* db = dout + (i64)b * L * qw + h * hd;
  for (int q0 = qstart; q0 < L; q0 += BQ) {
    sync_block();
    load_rows<T, BQ>(qs, qb, qw, q0, L, hd);
    load_rows<T, BQ>(dos, db, qw, q0, L, hd);
    for (int ii = tid; ii < BQ; ii += NT) {
      const int i = q0 + ii;
      const i64 li = ((i64)b * L + i) * heads + h;
      ls[ii] = i < L ? lse[li] : 0.f;
      Ds[ii] = i < L ? Dr[li] : 0.f;
      qd[ii] = (docmask && i < L) ? docs[(i64)b * L + i] : -1;
    }
    sync_block();
    u32 vm = 0;
    if (valid)
#pragma unroll 1
      for (int ii = 0; ii < BQ; ii++) {
        const int i = q0 + ii;
        if (i < L && visible(vis, i, j) && (!docmask || qd[ii] == kdoc)) vm |= 1u << ii;
      }
#pragma unroll 4
    for (int ii = 0; ii < BQ; ii++) {
      const float* qt = qs + ii * ROW + lane * SEG;
      const float* dt = dos + ii * ROW + lane * SEG;
      const float s = team_sum<T>(dot32(kr, qt));
      const float dp = team_sum<T>(dot32(vr, dt));
      const float p = ((vm >> ii) & 1u) ? exp_(s * scale - ls[ii]) : 0.f;
      const float ds = p * (dp - Ds[ii]) * scale;
      axpy32(dka, ds, qt);
      axpy32(dva, p, dt);
    }
  }
  if (!valid) return;
  const i64 o = hh * pstride + krow;
#pragma unroll
  for (int e = 0; e < DT; e++) {
    const int d = lane * DT + e;
    if (d < hd) dk[o + d] = dka[e], dv[o + d] = dva[e];
  }
}

#define FWD_ARGS                                                                                                   \
  float *out, float *lse, const float *q, const float *k, const float *v, const int *docs, int Lq, int Lk, int qoff, \
      int kstride, int heads, int kvheads, int hd, float scale, int mode, float ratio, u64 seed, int blk, int half,  \
      int docmask
#define FWD_PASS out, lse, q, k, v, docs, Lq, Lk, qoff, kstride, heads, kvheads, hd, scale, mode, ratio, seed, blk, half, docmask
#define DQ_ARGS                                                                                                     \
  float *dq, const float *dout, const float *q, const float *k, const float *v, const float *lse, const float *Dr, \
      const int *docs, int L, int heads, int kvheads, int hd, float scale, int mode, float ratio, u64 seed, int blk, \
      int half, int docmask
#define DQ_PASS dq, dout, q, k, v, lse, Dr, docs, L, heads, kvheads, hd, scale, mode, ratio, seed, blk, half, docmask
#define DKV_ARGS                                                                                                      \
  float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *lse,         \
      const float *Dr, const int *docs, int L, int heads, int kvheads, int hd, float scale, int mode, float ratio,    \
      u64 seed, int blk, int half, int docmask, i64 pstride
#define DKV_PASS \
  dk, dv, dout, q, k, v, lse, Dr, docs, L, heads, kvheads, hd, scale, mode, ratio, seed, blk, half, docmask, pstride

#define TEAM_KERNELS(T)                                                                   \
  KERNEL void attn_fwd_t##T(FWD_ARGS) { attn_fwd<T>(FWD_PASS); }                         \
  KERNEL void attn_bwd_dq_t##T(DQ_ARGS) { attn_bwd_dq<T>(DQ_PASS); }                     \
  KERNEL void attn_bwd_dkv_t##T(DKV_ARGS) { attn_bwd_dkv<T>(DKV_PASS); }

TEAM_KERNELS(1)
TEAM_KERNELS(2)
TEAM_KERNELS(4)
TEAM_KERNELS(8)

// attn_bwd_prep: D[r] = sum_d dout[r][d] * out[r][d] over rows r of hd values.
KERNEL void attn_bwd_prep(float* D, const float* dout, const float* out, i64 rows, int hd) {
  GRID_STRIDE(r, rows) {
    const float *a = dout + r * hd, *o = out + r * hd;
    float s = 0.f;
    for (int d = 0; d < hd; d++) s += a[d] * o[d];
    D[r] = s;
  }
}

// attn_bwd_reduce: dk = sum over the group of the partials (and dv).
KERNEL void attn_bwd_reduce(float* dk, float* dv, const float* pk, const float* pv, i64 n, int group) {
  GRID_STRIDE(x, n) {
    float a = 0.f, c = 0.f;
    for (int g = 0; g < group; g++) a += pk[g * n + x], c += pv[g * n + x];
    dk[x] = a;
    dv[x] = c;
  }
}
