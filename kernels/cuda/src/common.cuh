// common.cuh: the little runtime every dllm kernel uses.
//
// The kernels are compiled two ways from the same text:
//   - for the GPU, by Debian's clang-14 in CUDA mode without any CUDA header
//     or library (-nocudainc -nocudalib): the handful of builtins used below
//     are clang's own NVVM builtins, exp and log are ex2.approx/lg2.approx in
//     inline PTX (no libdevice);
//   - for the host emulator of the Go tests (DLLM_EMU, see ../emu), where
//     the same names are plain C++ and a "thread" is a fiber.
#pragma once

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;
typedef unsigned short u16;

#ifdef DLLM_EMU
#include "../emu/emu.h"
#else
#define KERNEL extern "C" __attribute__((global))
#define DEV static __attribute__((device)) __attribute__((always_inline)) inline
#define SHARED __attribute__((shared))

DEV u32 tid_x() { return __nvvm_read_ptx_sreg_tid_x(); }
DEV u32 tid_y() { return __nvvm_read_ptx_sreg_tid_y(); }
DEV u32 ntid_x() { return __nvvm_read_ptx_sreg_ntid_x(); }
DEV u32 ntid_y() { return __nvvm_read_ptx_sreg_ntid_y(); }
DEV u32 ctaid_x() { return __nvvm_read_ptx_sreg_ctaid_x(); }
DEV u32 ctaid_y() { return __nvvm_read_ptx_sreg_ctaid_y(); }
DEV u32 ctaid_z() { return __nvvm_read_ptx_sreg_ctaid_z(); }
DEV u32 nctaid_x() { return __nvvm_read_ptx_sreg_nctaid_x(); }

// sync_block is __syncthreads.
DEV void sync_block() { __syncthreads(); }

// shfl_xor exchanges v with lane ^ mask; every lane of the warp takes part.
DEV float shfl_xor(float v, int mask) { return __nvvm_shfl_sync_bfly_f32(0xffffffffu, v, mask, 0x1f); }

DEV void atomic_add(float* p, float v) { __nvvm_atom_add_gen_f(p, v); }

DEV float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

DEV float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// mma_16816 is c += A B on the tensor cores for one warp: A 16x16 and B
// 16x8 in bf16, c 16x8 in fp32, in the fragments of the PTX ISA's
// "Matrix Fragments for mma.m16n8k16 with floating point type" (lane =
// 4*group + t: a = rows group and group+8, columns 2t, 2t+1 and 2t+8, 2t+9;
// b = rows 2t, 2t+1 and 2t+8, 2t+9 of column group; c = rows group and
// group+8, columns 2t, 2t+1). Every lane of the warp must call it.
DEV void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

#define NEG_INF (-__builtin_inff())

// bf16_rne is f rounded to bfloat16 (nearest even; NaN stays a quiet NaN),
// as cast_f32_bf16 and kernels/cpu's BF16 round trip.
DEV u32 bf16_rne(float f) {
  const u32 b = __builtin_bit_cast(u32, f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u;
  return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}

// pack_bf16 is the bf16x2 register of an mma fragment: lo in bits 0-15.
DEV u32 pack_bf16(float lo, float hi) { return bf16_rne(lo) | (bf16_rne(hi) << 16); }

DEV float fmaxf_(float a, float b) { return a > b ? a : b; }
DEV int imin(int a, int b) { return a < b ? a : b; }

// exp_ is e^x with about 2 ulp of error: 2^(x log2 e) with the rounding
// error of the product carried to first order. Like kernels/cpu's expf it
// is 0 below -87.33654 and +Inf above 88.72283; NaN stays NaN.
DEV float exp_(float x) {
  if (x < -87.33654f) return 0.f;
  if (x > 88.72283f) return __builtin_inff();
  const float l2e = 1.44269502f, l2e_lo = 1.9259630e-8f;
  float t = x * l2e;
  float e = __builtin_fmaf(x, l2e, -t) + x * l2e_lo;
  return ex2(t) * (1.f + e * 0.693147181f);
}

// log_ is the natural logarithm (lg2.approx times ln 2).
DEV float log_(float x) { return lg2(x) * 0.693147181f; }

// Grid-stride loop over [0, n) with 64-bit indices.
#define GRID_STRIDE(i, n) \
  for (i64 i = (i64)ctaid_x() * ntid_x() + tid_x(); i < (i64)(n); i += (i64)nctaid_x() * ntid_x())

// warp_sum adds v over the 32 lanes of a warp; every lane gets the total.
DEV float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += shfl_xor(v, o);
  return v;
}

// block_sum adds v over a one-dimensional block whose size is a multiple of
// 32 (at most 1024); every thread gets the total. sh holds 32 floats.
DEV float block_sum(float v, float* sh) {
  const int lane = tid_x() % 32, w = tid_x() / 32, nw = ntid_x() / 32;
  v = warp_sum(v);
  sync_block();
  if (lane == 0) sh[w] = v;
  sync_block();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}
