// attention_mma.cu: attention on the tensor cores for head_dim 64 and 128
// (FlashAttention-2), with mma.sync m16n8k16: bf16 inputs (q, k, v, dout
// and the probabilities, rounded to nearest even as they are staged), fp32
// accumulation, fp32 softmax statistics, fp32 in and out of device memory.
//
// A block is 4 warps; each warp owns 16 rows (queries in the forward and
// dq, keys in dk/dv) of the block's 64, and walks tiles of the other side.
// The visibility rule (visibility.cuh) is evaluated per (query, key) pair
// of each tile by the lanes that hold the pair's score; a tile in which no
// pair of the block is visible is skipped whole, before anything is loaded.
// Scores stay in registers: the accumulator fragment of S = Q K^T is, pair
// by pair, the A fragment of P for P V (no shuffles, no shared memory).
// Tiles sit in shared memory as bf16 rows padded by 8 values, so that the
// 32-bit fragment loads of a warp hit 32 different banks.
#include "common.cuh"
#include "visibility.cuh"

#define MW 4        // warps per block
#define MROWS 64    // rows per block (16 per warp)

// quad_max and quad_sum reduce over the 4 lanes that share a fragment row.
DEV float quad_max(float v) {
  v = fmaxf_(v, shfl_xor(v, 1));
  return fmaxf_(v, shfl_xor(v, 2));
}
DEV float quad_sum(float v) {
  v += shfl_xor(v, 1);
  return v + shfl_xor(v, 2);
}

// ld32 is two consecutive bf16 of shared memory; ldT pairs the values at
// the same column of two rows (the transposed operand).
DEV u32 ld32(const u16* p) { return *(const u32*)p; }
DEV u32 ldT(const u16* p, int pitch) { return (u32)p[0] | ((u32)p[pitch] << 16); }

// stage rows [r0, r0+R) of src (row stride ld floats, D used) into dst as
// bf16 with row pitch D+8; rows >= n are zero.
template <int D, int R>
DEV void stage(u16* dst, const float* src, i64 ld, int r0, int n) {
  constexpr int P = D + 8, C4 = D / 4;
#pragma unroll 1
  for (int idx = tid_x(); idx < R * C4; idx += MW * 32) {
    const int rr = idx / C4, c = (idx - rr * C4) * 4, r = r0 + rr;
    u32 lo = 0, hi = 0;
    if (r < n) {
      const float* s = src + (i64)r * ld + c;
      lo = pack_bf16(s[0], s[1]);
      hi = pack_bf16(s[2], s[3]);
    }
    u32* d = (u32*)(dst + rr * P + c);
    d[0] = lo;
    d[1] = hi;
  }
}

// frag_a loads the A fragments (16 rows from row0 of a row-major fp32
// matrix, D columns) of one warp straight from device memory; rows >= n
// are zero.
template <int D>
DEV void frag_a(u32 (*a)[4], const float* base, i64 ld, int row0, int n) {
  const int lane = tid_x() % 32, g = lane / 4, t = lane % 4;
  const int r0 = row0 + g, r1 = r0 + 8;
  const float* p0 = base + (i64)r0 * ld;
  const float* p1 = base + (i64)r1 * ld;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    const int c = kk * 16 + 2 * t;
    a[kk][0] = r0 < n ? pack_bf16(p0[c], p0[c + 1]) : 0u;
    a[kk][1] = r1 < n ? pack_bf16(p1[c], p1[c + 1]) : 0u;
    a[kk][2] = r0 < n ? pack_bf16(p0[c + 8], p0[c + 9]) : 0u;
    a[kk][3] = r1 < n ? pack_bf16(p1[c + 8], p1[c + 9]) : 0u;
  }
}

// block_any is true in every thread when any thread's v is non-zero.
DEV bool block_any(bool v, int* flag) {
  sync_block();
  if (tid_x() == 0) *flag = 0;
  sync_block();
  if (v) *flag = 1;
  sync_block();
  return *flag != 0;
}

// Forward: O = softmax(scale Q K^T under the rule) V, lse per (row, query,
// head) at (b*Lq+i)*heads+h. KV-cache dims as attn_fwd_t*.
template <int D>
DEV void fwd_mma(float* out, float* lse, const float* q, const float* k, const float* v, const int* docs, int Lq,
                 int Lk, int qoff, int kstride, int heads, int kvheads, float scale, int mode, float ratio, u64 seed,
                 int blk, int half, int docmask) {
  constexpr int BK = 64, P = D + 8, NTL = BK / 8;
  SHARED u16 ks[BK * P] __attribute__((aligned(16)));
  SHARED u16 vs[BK * P] __attribute__((aligned(16)));
  SHARED int flag;
  const Vis vis = {mode, ratio, seed, blk, half};
  const int lane = tid_x() % 32, warp = tid_x() / 32, g = lane / 4, t = lane % 4;
  const int b = ctaid_z(), h = ctaid_y(), kvh = h / (heads / kvheads);
  const i64 qw = (i64)heads * D, kw = (i64)kvheads * D;
  const int row0 = ctaid_x() * MROWS + warp * 16;
  const int r[2] = {row0 + g, row0 + g + 8};
  const bool ok[2] = {r[0] < Lq, r[1] < Lq};
  int qdoc[2] = {0, 0};
  #pragma unroll
  for (int x = 0; x < 2; x++)
    if (docmask && ok[x]) qdoc[x] = docs[(i64)b * kstride + qoff + r[x]];
  u32 qa[D / 16][4];
  frag_a<D>(qa, q + (i64)b * Lq * qw + h * D, qw, row0, Lq);
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  const float* kb = k + (i64)b * kstride * kw + kvh * D;
  const float* vb = v + (i64)b * kstride * kw + kvh * D;
  for (int k0 = 0; k0 < Lk; k0 += BK) {
    // Bit 2n+e of vm[x]: key k0 + 8n + 2t + e visible from row r[x].
    u32 vm[2] = {0u, 0u};
#pragma unroll 1
    for (int c = 0; c < 2 * NTL; c++) {
      const int j = k0 + (c / 2) * 8 + 2 * t + (c & 1);
      if (j >= Lk) continue;
      const int kd = docmask ? docs[(i64)b * kstride + j] : 0;
      #pragma unroll
      for (int x = 0; x < 2; x++)
        if (ok[x] && visible(vis, qoff + r[x], j) && (!docmask || kd == qdoc[x])) vm[x] |= 1u << c;
    }
    if (!block_any(vm[0] | vm[1], &flag)) continue;
    stage<D, BK>(ks, kb, kw, k0, Lk);
    stage<D, BK>(vs, vb, kw, k0, Lk);
    sync_block();
    float s[NTL][4];
#pragma unroll
    for (int n = 0; n < NTL; n++) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      const u16* kr = ks + (n * 8 + g) * P + 2 * t;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) mma_16816(s[n], qa[kk], ld32(kr + kk * 16), ld32(kr + kk * 16 + 8));
    }
    float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int n = 0; n < NTL; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int x = e / 2;
        s[n][e] = (vm[x] >> (2 * n + (e & 1))) & 1u ? s[n][e] * scale : NEG_INF;
        mx[x] = fmaxf_(mx[x], s[n][e]);
      }
    float alpha[2];
    #pragma unroll
    for (int x = 0; x < 2; x++) {
      const float mnew = fmaxf_(m[x], quad_max(mx[x]));
      alpha[x] = mnew == NEG_INF ? 1.f : exp_(m[x] - mnew);
      m[x] = mnew;
      l[x] *= alpha[x];
    }
#pragma unroll
    for (int n = 0; n < NTL; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int x = e / 2;
        const float p = s[n][e] == NEG_INF ? 0.f : exp_(s[n][e] - m[x]);
        s[n][e] = p;
        l[x] += p;
      }
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      const u32 pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const u16* vr = vs + (kk * 16 + 2 * t) * P + g;
#pragma unroll
      for (int n = 0; n < D / 8; n++) mma_16816(o[n], pa, ldT(vr + n * 8, P), ldT(vr + 8 * P + n * 8, P));
    }
  }
  #pragma unroll
  for (int x = 0; x < 2; x++) {
    const float lt = quad_sum(l[x]);
    if (!ok[x]) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    float* op = out + ((i64)b * Lq + r[x]) * qw + h * D + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; n++) op[n * 8] = o[n][2 * x] * inv, op[n * 8 + 1] = o[n][2 * x + 1] * inv;
    if (t == 0) lse[((i64)b * Lq + r[x]) * heads + h] = lt > 0.f ? m[x] + log_(lt) : 0.f;
  }
}

// dq = scale * sum_j P_ij (dP_ij - D_i) k_j, P = exp(scale q.k - lse),
// dP = dout . v, over tiles of BK keys.
template <int D>
DEV void dq_mma(float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse,
                const float* Dr, const int* docs, int L, int heads, int kvheads, float scale, int mode, float ratio,
                u64 seed, int blk, int half, int docmask) {
  constexpr int BK = D == 64 ? 64 : 32, P = D + 8, NTL = BK / 8;
  SHARED u16 ks[BK * P] __attribute__((aligned(16)));
  SHARED u16 vs[BK * P] __attribute__((aligned(16)));
  SHARED int flag;
  const Vis vis = {mode, ratio, seed, blk, half};
  const int lane = tid_x() % 32, warp = tid_x() / 32, g = lane / 4, t = lane % 4;
  const int b = ctaid_z(), h = ctaid_y(), kvh = h / (heads / kvheads);
  const i64 qw = (i64)heads * D, kw = (i64)kvheads * D;
  const int row0 = ctaid_x() * MROWS + warp * 16;
  const int r[2] = {row0 + g, row0 + g + 8};
  const bool ok[2] = {r[0] < L, r[1] < L};
  int qdoc[2] = {0, 0};
  float li[2] = {0.f, 0.f}, Di[2] = {0.f, 0.f};
  #pragma unroll
  for (int x = 0; x < 2; x++) {
    if (!ok[x]) continue;
    if (docmask) qdoc[x] = docs[(i64)b * L + r[x]];
    li[x] = lse[((i64)b * L + r[x]) * heads + h];
    Di[x] = Dr[((i64)b * L + r[x]) * heads + h];
  }
  u32 qa[D / 16][4], da[D / 16][4];
  frag_a<D>(qa, q + (i64)b * L * qw + h * D, qw, row0, L);
  frag_a<D>(da, dout + (i64)b * L * qw + h * D, qw, row0, L);
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  const float* kb = k + (i64)b * L * kw + kvh * D;
  const float* vb = v + (i64)b * L * kw + kvh * D;
  for (int k0 = 0; k0 < L; k0 += BK) {
    u32 vm[2] = {0u, 0u};
#pragma unroll 1
    for (int c = 0; c < 2 * NTL; c++) {
      const int j = k0 + (c / 2) * 8 + 2 * t + (c & 1);
      if (j >= L) continue;
      const int kd = docmask ? docs[(i64)b * L + j] : 0;
      #pragma unroll
      for (int x = 0; x < 2; x++)
        if (ok[x] && visible(vis, r[x], j) && (!docmask || kd == qdoc[x])) vm[x] |= 1u << c;
    }
    if (!block_any(vm[0] | vm[1], &flag)) continue;
    stage<D, BK>(ks, kb, kw, k0, L);
    stage<D, BK>(vs, vb, kw, k0, L);
    sync_block();
    float s[NTL][4];
#pragma unroll
    for (int n = 0; n < NTL; n++) {
      float dp[4] = {0.f, 0.f, 0.f, 0.f};
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      const u16* kr = ks + (n * 8 + g) * P + 2 * t;
      const u16* vr = vs + (n * 8 + g) * P + 2 * t;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        mma_16816(s[n], qa[kk], ld32(kr + kk * 16), ld32(kr + kk * 16 + 8));
        mma_16816(dp, da[kk], ld32(vr + kk * 16), ld32(vr + kk * 16 + 8));
      }
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int x = e / 2;
        const float p = (vm[x] >> (2 * n + (e & 1))) & 1u ? exp_(s[n][e] * scale - li[x]) : 0.f;
        s[n][e] = p * (dp[e] - Di[x]) * scale;
      }
    }
    // dq += dS K: dS's accumulator fragments are A fragments over the keys.
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      const u32 sa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const u16* kr = ks + (kk * 16 + 2 * t) * P + g;
#pragma unroll
      for (int n = 0; n < D / 8; n++) mma_16816(acc[n], sa, ldT(kr + n * 8, P), ldT(kr + 8 * P + n * 8, P));
    }
  }
  #pragma unroll
  for (int x = 0; x < 2; x++) {
    if (!ok[x]) continue;
    float* dp = dq + ((i64)b * L + r[x]) * qw + h * D + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; n++) dp[n * 8] = acc[n][2 * x], dp[n * 8 + 1] = acc[n][2 * x + 1];
  }
}

// dk, dv per key over tiles of BQ queries, for query head h into the
// partials at (h % group) * pstride (summed over the group by
// attn_bwd_reduce). The block's 64 keys and values stay in shared memory
// (A fragments of S^T = K Q^T and dP^T = V dO^T).
template <int D>
DEV void dkv_mma(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                 const float* lse, const float* Dr, const int* docs, int L, int heads, int kvheads, float scale,
                 int mode, float ratio, u64 seed, int blk, int half, int docmask, i64 pstride) {
  constexpr int BQ = D == 64 ? 64 : 16, P = D + 8, NTL = BQ / 8;
  SHARED u16 ks[MROWS * P] __attribute__((aligned(16)));
  SHARED u16 vs[MROWS * P] __attribute__((aligned(16)));
  SHARED u16 qs[BQ * P] __attribute__((aligned(16)));
  SHARED u16 dos[BQ * P] __attribute__((aligned(16)));
  SHARED float ls[BQ], Ds[BQ];
  SHARED int flag;
  const Vis vis = {mode, ratio, seed, blk, half};
  const int lane = tid_x() % 32, warp = tid_x() / 32, g = lane / 4, t = lane % 4;
  const int b = ctaid_z(), h = ctaid_y(), group = heads / kvheads, kvh = h / group, hh = h % group;
  const i64 qw = (i64)heads * D, kw = (i64)kvheads * D;
  const int kblock = ctaid_x() * MROWS, row0 = kblock + warp * 16;
  const int r[2] = {row0 + g, row0 + g + 8};
  const bool ok[2] = {r[0] < L, r[1] < L};
  int kdoc[2] = {0, 0};
  #pragma unroll
  for (int x = 0; x < 2; x++)
    if (docmask && ok[x]) kdoc[x] = docs[(i64)b * L + r[x]];
  stage<D, MROWS>(ks, k + (i64)b * L * kw + kvh * D, kw, kblock, L);
  stage<D, MROWS>(vs, v + (i64)b * L * kw + kvh * D, kw, kblock, L);
  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; n++) {
    dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.f;
    dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.f;
  }
  const float* qb = q + (i64)b * L * qw + h * D;
  const float* db = dout + (i64)b * L * qw + h * D;
  const u16* kw0 = ks + (warp * 16 + g) * P + 2 * t;
  const u16* vw0 = vs + (warp * 16 + g) * P + 2 * t;
  for (int q0 = 0; q0 < L; q0 += BQ) {
    // Bit 2n+e of vm[x]: query q0 + 8n + 2t + e sees key r[x].
    u32 vm[2] = {0u, 0u};
#pragma unroll 1
    for (int c = 0; c < 2 * NTL; c++) {
      const int i = q0 + (c / 2) * 8 + 2 * t + (c & 1);
      if (i >= L) continue;
      const int qd = docmask ? docs[(i64)b * L + i] : 0;
      #pragma unroll
      for (int x = 0; x < 2; x++)
        if (ok[x] && visible(vis, i, r[x]) && (!docmask || qd == kdoc[x])) vm[x] |= 1u << c;
    }
    if (!block_any(vm[0] | vm[1], &flag)) continue;
    stage<D, BQ>(qs, qb, qw, q0, L);
    stage<D, BQ>(dos, db, qw, q0, L);
    for (int ii = tid_x(); ii < BQ; ii += MW * 32) {
      const int i = q0 + ii;
      const i64 li = ((i64)b * L + i) * heads + h;
      ls[ii] = i < L ? lse[li] : 0.f;
      Ds[ii] = i < L ? Dr[li] : 0.f;
    }
    sync_block();
    float s[NTL][4], ds[NTL][4];
#pragma unroll
    for (int n = 0; n < NTL; n++) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      ds[n][0] = ds[n][1] = ds[n][2] = ds[n][3] = 0.f;
      const u16* qr = qs + (n * 8 + g) * P + 2 * t;
      const u16* dr = dos + (n * 8 + g) * P + 2 * t;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        const u32 ka[4] = {ld32(kw0 + kk * 16), ld32(kw0 + 8 * P + kk * 16), ld32(kw0 + kk * 16 + 8),
                           ld32(kw0 + 8 * P + kk * 16 + 8)};
        const u32 va[4] = {ld32(vw0 + kk * 16), ld32(vw0 + 8 * P + kk * 16), ld32(vw0 + kk * 16 + 8),
                           ld32(vw0 + 8 * P + kk * 16 + 8)};
        mma_16816(s[n], ka, ld32(qr + kk * 16), ld32(qr + kk * 16 + 8));
        mma_16816(ds[n], va, ld32(dr + kk * 16), ld32(dr + kk * 16 + 8));
      }
      // s becomes P^T and ds dS^T (rows: keys, columns: queries).
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int x = e / 2, ii = n * 8 + 2 * t + (e & 1);
        const float p = (vm[x] >> (2 * n + (e & 1))) & 1u ? exp_(s[n][e] * scale - ls[ii]) : 0.f;
        s[n][e] = p;
        ds[n][e] = p * (ds[n][e] - Ds[ii]) * scale;
      }
    }
    // dv += P^T dO and dk += dS^T Q, 16 queries per k-step.
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++) {
      const u32 pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const u32 sa[4] = {pack_bf16(ds[2 * kk][0], ds[2 * kk][1]), pack_bf16(ds[2 * kk][2], ds[2 * kk][3]),
                         pack_bf16(ds[2 * kk + 1][0], ds[2 * kk + 1][1]),
                         pack_bf16(ds[2 * kk + 1][2], ds[2 * kk + 1][3])};
      const u16* dT = dos + (kk * 16 + 2 * t) * P + g;
      const u16* qT = qs + (kk * 16 + 2 * t) * P + g;
#pragma unroll
      for (int c = 0; c < D / 8; c++) {
        mma_16816(dva[c], pa, ldT(dT + c * 8, P), ldT(dT + 8 * P + c * 8, P));
        mma_16816(dka[c], sa, ldT(qT + c * 8, P), ldT(qT + 8 * P + c * 8, P));
      }
    }
  }
  const i64 o = hh * pstride;
  #pragma unroll
  for (int x = 0; x < 2; x++) {
    if (!ok[x]) continue;
    const i64 kr = o + ((i64)b * L + r[x]) * kw + kvh * D + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
      dk[kr + n * 8] = dka[n][2 * x], dk[kr + n * 8 + 1] = dka[n][2 * x + 1];
      dv[kr + n * 8] = dva[n][2 * x], dv[kr + n * 8 + 1] = dva[n][2 * x + 1];
    }
  }
}

#define MMA_KERNELS(D)                                                                                            \
  KERNEL void attn_fwd_mma##D(float* out, float* lse, const float* q, const float* k, const float* v,            \
                              const int* docs, int Lq, int Lk, int qoff, int kstride, int heads, int kvheads,    \
                              int hd, float scale, int mode, float ratio, u64 seed, int blk, int half,           \
                              int docmask) {                                                                     \
    (void)hd;                                                                                                    \
    fwd_mma<D>(out, lse, q, k, v, docs, Lq, Lk, qoff, kstride, heads, kvheads, scale, mode, ratio, seed, blk,    \
               half, docmask);                                                                                   \
  }                                                                                                              \
  KERNEL void attn_bwd_dq_mma##D(float* dq, const float* dout, const float* q, const float* k, const float* v,   \
                                 const float* lse, const float* Dr, const int* docs, int L, int heads,           \
                                 int kvheads, int hd, float scale, int mode, float ratio, u64 seed, int blk,     \
                                 int half, int docmask) {                                                        \
    (void)hd;                                                                                                    \
    dq_mma<D>(dq, dout, q, k, v, lse, Dr, docs, L, heads, kvheads, scale, mode, ratio, seed, blk, half, docmask); \
  }                                                                                                              \
  KERNEL void attn_bwd_dkv_mma##D(float* dk, float* dv, const float* dout, const float* q, const float* k,       \
                                  const float* v, const float* lse, const float* Dr, const int* docs, int L,     \
                                  int heads, int kvheads, int hd, float scale, int mode, float ratio, u64 seed,  \
                                  int blk, int half, int docmask, i64 pstride) {                                 \
    (void)hd;                                                                                                    \
    dkv_mma<D>(dk, dv, dout, q, k, v, lse, Dr, docs, L, heads, kvheads, scale, mode, ratio, seed, blk, half,     \
               docmask, pstride);                                                                                \
  }

MMA_KERNELS(64)
MMA_KERNELS(128)
