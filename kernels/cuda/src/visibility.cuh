// visibility.cuh: kernels.Visibility's rule, evaluated per (query, key)
// pair by the attention kernels (attention.cu, attention_mma.cu).
#pragma once
#include "common.cuh"

struct Vis {
  int mode;
  float ratio;
  u64 seed;
  int blk, half;
};

// hash01 is kernels.Hash01, bit for bit: splitmix64's finaliser on
// seed + ((i<<32)|j) * golden, top 24 bits scaled to [0, 1).
DEV float hash01(u64 seed, int i, int j) {
  u64 z = seed + ((((u64)(u32)i) << 32) | (u64)(u32)j) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// visible is kernels.Visibility.Visible (modes in kernels.Mode order).
DEV bool visible(const Vis& v, int i, int j) {
  switch (v.mode) {
    case 0:  // causal
      return j <= i;
    case 1:  // bidirectional
      return true;
    case 2:  // annealed
      return j <= i || hash01(v.seed, i, j) < v.ratio;
    case 3:  // block
      return j / v.blk <= i / v.blk;
    case 4: {  // block diffusion on [xt ; x0]
      const int L = v.half, b = v.blk;
      const bool qn = i < L, kn = j < L;
      const int qb = (i % L) / b, kb = (j % L) / b;
      if (qn && kn) return qb == kb;
      if (qn) return kb < qb;
      if (kn) return false;
      return kb <= qb;
    }
  }
  return false;
}
