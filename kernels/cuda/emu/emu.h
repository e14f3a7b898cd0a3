// emu.h: what common.cuh needs when the kernels are compiled for the host
// emulator (DLLM_EMU). A CUDA thread is a fiber (ucontext); the fibers of a
// block run one at a time on one OS thread and switch only at barriers
// (__syncthreads, and the two halves of a warp shuffle), so "atomic" adds
// are plain adds and __shared__ memory is a static variable. Blocks run one
// after another. It is slow and exact: it checks the kernels' indexing,
// barriers and arithmetic against kernels/cpu in go test, with no GPU.
#pragma once
#include <math.h>
#include <string.h>
#include <ucontext.h>

#define KERNEL extern "C"
#define DEV static inline
#define SHARED static

enum { EMU_READY, EMU_WAIT_BLOCK, EMU_WAIT_WARP, EMU_DONE };

struct EmuFiber {
  ucontext_t ctx;  // the portable switch
  void* sp;        // the x86-64 switch
  int state;
  u32 tx, ty, tz;
  int lin;
  int mma;  // mma_16816 calls so far in this block
  char* stack;
};

static EmuFiber* emu_cur;
static ucontext_t emu_sched;
static void* emu_sched_sp;

#if defined(__x86_64__)
// dllm_emu_switch saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save and
// resumes the context whose stack pointer is next. glibc's swapcontext
// does the same plus a sigprocmask system call, which made the emulator
// spend half its time in the kernel.
extern "C" void dllm_emu_switch(void** save, void* next) __attribute__((visibility("hidden")));
#define EMU_FAST_SWITCH 1
#endif
static u32 emu_bdim[3], emu_bid[3], emu_gdim[3];
static u64 emu_slots[1024];

static void emu_yield(int state) {
  emu_cur->state = state;
#ifdef EMU_FAST_SWITCH
  dllm_emu_switch(&emu_cur->sp, emu_sched_sp);
#else
  swapcontext(&emu_cur->ctx, &emu_sched);
#endif
}

DEV u32 tid_x() { return emu_cur->tx; }
DEV u32 tid_y() { return emu_cur->ty; }
DEV u32 ntid_x() { return emu_bdim[0]; }
DEV u32 ntid_y() { return emu_bdim[1]; }
DEV u32 ctaid_x() { return emu_bid[0]; }
DEV u32 ctaid_y() { return emu_bid[1]; }
DEV u32 ctaid_z() { return emu_bid[2]; }
DEV u32 nctaid_x() { return emu_gdim[0]; }

DEV void sync_block() { emu_yield(EMU_WAIT_BLOCK); }

DEV float shfl_xor(float v, int mask) {
  const int lin = emu_cur->lin;
  u32 bits;
  memcpy(&bits, &v, 4);
  emu_slots[lin] = bits;
  emu_yield(EMU_WAIT_WARP);
  bits = (u32)emu_slots[(lin & ~31) | ((lin & 31) ^ mask)];
  emu_yield(EMU_WAIT_WARP);
  float r;
  memcpy(&r, &bits, 4);
  return r;
}

DEV void atomic_add(float* p, float v) { *p += v; }
DEV float ex2(float x) { return exp2f(x); }
DEV float lg2(float x) { return log2f(x); }

// mma_16816 is the warp's mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32:
// each lane leaves its fragments in a slot and the warp meets; the first
// lane to resume rebuilds A (16x16) and B (16x8) from the 32 slots with the
// PTX ISA's fragment layout and multiplies them; each lane adds its four
// elements of the product to c, and the warp meets again before the slots
// are reused.
static u32 emu_mma[1024][6];
static float emu_mma_ab[32][16][8];
static int emu_mma_done[32];

static float emu_bf16(u32 word, int hi) {
  const u32 b = (hi ? word >> 16 : word & 0xffffu) << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}

DEV void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
  const int lin = emu_cur->lin, base = lin & ~31, w = lin / 32;
  const int call = ++emu_cur->mma;
  u32* s = emu_mma[lin];
  s[0] = a[0], s[1] = a[1], s[2] = a[2], s[3] = a[3], s[4] = b0, s[5] = b1;
  emu_yield(EMU_WAIT_WARP);
  if (emu_mma_done[w] != call) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
      const u32* x = emu_mma[base + lane];
      const int g = lane >> 2, t = lane & 3;
      for (int i = 0; i < 8; i++) {  // a0..a7: two per register, low half first
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = emu_bf16(x[i / 2], i & 1);
      }
      for (int i = 0; i < 4; i++) {  // b0..b3
        const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
        B[row][g] = emu_bf16(x[4 + i / 2], i & 1);
      }
    }
    for (int row = 0; row < 16; row++)
      for (int col = 0; col < 8; col++) {
        float d = 0.f;
        for (int k = 0; k < 16; k++) d += A[row][k] * B[k][col];
        emu_mma_ab[w][row][col] = d;
      }
    emu_mma_done[w] = call;
  }
  const int g = (lin & 31) >> 2, t = lin & 3;
  for (int i = 0; i < 4; i++) c[i] += emu_mma_ab[w][g + (i >= 2 ? 8 : 0)][t * 2 + (i & 1)];
  emu_yield(EMU_WAIT_WARP);
}
