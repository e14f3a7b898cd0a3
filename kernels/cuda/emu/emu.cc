// emu.cc: the host emulator of the dllm kernels (see emu.h), built into a
// shared library by the Go tests of kernels/cuda and driven through purego
// exactly as libcuda and cuBLAS are: emu_launch takes the kernel's name and
// the same kernelParams array cuLaunchKernel takes; emu_gemm is a
// column-major reference with cublasGemmEx's arguments.
#define DLLM_EMU 1
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <utility>

#include "../src/common.cuh"
#include "../src/attention.cu"
#include "../src/attention_mma.cu"
#include "../src/elementwise.cu"
#include "../src/loss.cu"
#include "../src/moe.cu"
#include "../src/norm.cu"
#include "../src/reduce.cu"

typedef void (*Thunk)(void**);

template <typename... A, size_t... I>
static void invoke_impl(void (*f)(A...), void** p, std::index_sequence<I...>) {
  f(*static_cast<A*>(p[I])...);
}

template <typename... A>
static void invoke(void (*f)(A...), void** p) {
  invoke_impl(f, p, std::index_sequence_for<A...>{});
}

#define REG(name) {#name, [](void** p) { invoke(name, p); }}

static const struct {
  const char* name;
  Thunk fn;
} kernels[] = {
    REG(add_f32),          REG(scale_f32),        REG(swiglu_fwd),       REG(swiglu_bwd),
    REG(add_bias),         REG(embedding_fwd),    REG(embedding_bwd),    REG(adamw),
    REG(adamw_bf16),
    REG(cast_f32_bf16),    REG(cast_bf16_f32),    REG(rope),             REG(rmsnorm_fwd),
    REG(rmsnorm_bwd_dx),   REG(colsum_partial),   REG(colsum_finish),    REG(reduce_partial),
    REG(reduce_finish),    REG(cross_entropy),    REG(attn_fwd_t1),      REG(attn_fwd_t2),
    REG(attn_fwd_t4),      REG(attn_fwd_t8),      REG(attn_bwd_dq_t1),   REG(attn_bwd_dq_t2),
    REG(attn_bwd_dq_t4),   REG(attn_bwd_dq_t8),   REG(attn_bwd_dkv_t1),  REG(attn_bwd_dkv_t2),
    REG(attn_bwd_dkv_t4),  REG(attn_bwd_dkv_t8),  REG(attn_bwd_prep),    REG(attn_bwd_reduce),
    REG(attn_fwd_mma64),   REG(attn_fwd_mma128),  REG(attn_bwd_dq_mma64), REG(attn_bwd_dq_mma128),
    REG(attn_bwd_dkv_mma64), REG(attn_bwd_dkv_mma128),
    REG(router_topk),      REG(router_bwd),       REG(moe_dispatch),     REG(moe_combine),
    REG(moe_combine_bwd_dy), REG(moe_combine_bwd_dw), REG(ce_chunk_stats), REG(ce_finish),
    REG(ce_chunk_grad),
};

static EmuFiber fibers[1024];
static Thunk cur_thunk;
static void** cur_params;
static const size_t stack_size = 256 << 10;

static void fiber_main() {
  cur_thunk(cur_params);
  emu_cur->state = EMU_DONE;
#ifdef EMU_FAST_SWITCH
  dllm_emu_switch(&emu_cur->sp, emu_sched_sp);
  __builtin_unreachable();
#endif
}

#ifdef EMU_FAST_SWITCH
asm(R"(
  .text
  .p2align 4
  .globl dllm_emu_switch
  .hidden dllm_emu_switch
  .type dllm_emu_switch, @function
dllm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr (%rsp)
  fnstcw 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dllm_emu_switch, .-dllm_emu_switch
)");

// fiber_stack prepares a fresh stack so that the first switch to it
// "returns" into fiber_main with the ABI's alignment (rsp = 8 mod 16).
static void* fiber_stack(char* stack, size_t size) {
  uintptr_t top = ((uintptr_t)stack + size) & ~(uintptr_t)15;
  uint64_t* sp = (uint64_t*)(top - 80);
  memset(sp, 0, 80);
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  memcpy(&sp[0], &mxcsr, 4);
  memcpy(&sp[1], &fpcw, 2);
  sp[8] = (uint64_t)(uintptr_t)&fiber_main;  // the return address, at top - 16
  return sp;
}
#endif

// run_block runs the fibers of one block to completion: 0, or 2 when the
// threads wait on barriers that can never open.
static int run_block(int n) {
  for (int i = 0; i < n; i++) {
    EmuFiber& f = fibers[i];
#ifdef EMU_FAST_SWITCH
    f.sp = fiber_stack(f.stack, stack_size);
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = stack_size;
    f.ctx.uc_link = &emu_sched;
    makecontext(&f.ctx, fiber_main, 0);
#endif
    f.state = EMU_READY;
    f.lin = i;
    f.mma = 0;
    f.tx = i % emu_bdim[0];
    f.ty = i / emu_bdim[0] % emu_bdim[1];
    f.tz = i / (emu_bdim[0] * emu_bdim[1]);
  }
  for (int w = 0; w < 32; w++) emu_mma_done[w] = 0;
  for (;;) {
    for (int i = 0; i < n; i++) {
      if (fibers[i].state != EMU_READY) continue;
      emu_cur = &fibers[i];
#ifdef EMU_FAST_SWITCH
      dllm_emu_switch(&emu_sched_sp, fibers[i].sp);
#else
      swapcontext(&emu_sched, &fibers[i].ctx);
#endif
    }
    int done = 0, block = 0;
    for (int i = 0; i < n; i++) {
      done += fibers[i].state == EMU_DONE;
      block += fibers[i].state == EMU_WAIT_BLOCK;
    }
    if (done == n) return 0;
    bool released = false;
    for (int w = 0; w * 32 < n; w++) {
      int live = 0, waiting = 0;
      for (int i = w * 32; i < n && i < w * 32 + 32; i++) {
        live += fibers[i].state != EMU_DONE;
        waiting += fibers[i].state == EMU_WAIT_WARP;
      }
      if (live > 0 && waiting == live) {
        for (int i = w * 32; i < n && i < w * 32 + 32; i++)
          if (fibers[i].state == EMU_WAIT_WARP) fibers[i].state = EMU_READY;
        released = true;
      }
    }
    if (released) continue;
    if (block + done == n) {
      for (int i = 0; i < n; i++)
        if (fibers[i].state == EMU_WAIT_BLOCK) fibers[i].state = EMU_READY;
      continue;
    }
    return 2;
  }
}

// emu_launch: 0 on success, 1 for an unknown kernel, 2 for a deadlock, 3 for
// a block of more than 1024 threads.
extern "C" int emu_launch(const char* name, u32 gx, u32 gy, u32 gz, u32 bx, u32 by, u32 bz, void** params) {
  Thunk fn = nullptr;
  for (auto& k : kernels)
    if (strcmp(k.name, name) == 0) fn = k.fn;
  if (!fn) return 1;
  const u32 n = bx * by * bz;
  if (n > 1024 || n == 0) return 3;
  for (u32 i = 0; i < n; i++)
    if (!fibers[i].stack) fibers[i].stack = (char*)malloc(stack_size);
  cur_thunk = fn;
  cur_params = params;
  emu_bdim[0] = bx, emu_bdim[1] = by, emu_bdim[2] = bz;
  emu_gdim[0] = gx, emu_gdim[1] = gy, emu_gdim[2] = gz;
  for (u32 z = 0; z < gz; z++)
    for (u32 y = 0; y < gy; y++)
      for (u32 x = 0; x < gx; x++) {
        emu_bid[0] = x, emu_bid[1] = y, emu_bid[2] = z;
        int rc = run_block((int)n);
        if (rc) return rc;
      }
  return 0;
}

extern "C" void* emu_malloc(size_t n) { return aligned_alloc(256, (n + 255) / 256 * 256); }
extern "C" void emu_free(void* p) { free(p); }
extern "C" void emu_memcpy(void* dst, const void* src, size_t n) { memcpy(dst, src, n); }
extern "C" void emu_memset32(void* dst, u32 v, size_t n) {
  u32* d = (u32*)dst;
  for (size_t i = 0; i < n; i++) d[i] = v;
}

static float load(const void* p, int type, i64 i) {
  if (type == 14) {  // CUDA_R_16BF
    u32 b = (u32)((const u16*)p)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
  }
  return ((const float*)p)[i];
}

// emu_gemm is cublasGemmEx for column-major matrices (op N = 0, T = 1), with
// C in float32: C = alpha op(A) op(B) + beta C, C not read when beta is 0.
extern "C" int emu_gemm(int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int atype, int lda,
                        const void* B, int btype, int ldb, const float* beta, float* C, int ctype, int ldc) {
  if (ctype != 0) return 7;
  if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1) return 7;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int l = 0; l < k; l++) {
        float a = ta ? load(A, atype, l + (i64)i * lda) : load(A, atype, i + (i64)l * lda);
        float b = tb ? load(B, btype, j + (i64)l * ldb) : load(B, btype, l + (i64)j * ldb);
        s += (double)a * b;
      }
      float* c = &C[i + (i64)j * ldc];
      *c = (float)(*alpha * s) + (*beta == 0.f ? 0.f : *beta * *c);
    }
  return 0;
}
