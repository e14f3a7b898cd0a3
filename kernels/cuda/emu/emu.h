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
