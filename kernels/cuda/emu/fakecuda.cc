// fakecuda.cc: a stand-in for libcuda.so.1 and libcublas.so.13 built on the
// host emulator, so that the real driver code of kernels/cuda
// (driver_linux.go: purego calls with the CUDA headers' prototypes, return
// codes, module loading, launches, cuBLAS) runs in tests on machines with no
// GPU. Each entry point checks its arguments where a wrong one would pass
// unnoticed (the stream, the context, the JIT options, cuBLAS's compute type
// and algorithm) and answers CUDA_ERROR_INVALID_VALUE (1) or
// CUBLAS_STATUS_INVALID_VALUE (7).
#include "emu.cc"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

static void* const fake_ctx = (void*)0xc0c0;
static void* const fake_stream = (void*)0x5757;
static void* const fake_handle = (void*)0xb1a5;
static void* current_ctx;
static int retained;
static size_t mem_limit = (size_t)1 << 34;  // 16 GiB: more is out of memory
static size_t mem_used;

struct FakeModule {
  char* text;
};
struct FakeFunction {
  char name[128];
};

#define CHECK(cond) \
  if (!(cond)) return 1
#define STREAM(s) CHECK((s) == fake_stream && current_ctx == fake_ctx)

extern "C" {
// DLLM_FAKECUDA_NO_DEVICE=1 makes it a driver library on a machine with no
// visible GPU (a container without one): cuInit says CUDA_ERROR_NO_DEVICE.
// DLLM_FAKECUDA_MEM=BYTES sets the device's memory (default 16 GiB).
CUresult cuInit(unsigned int flags) {
  if (getenv("DLLM_FAKECUDA_NO_DEVICE")) return 100;
  if (const char* m = getenv("DLLM_FAKECUDA_MEM")) mem_limit = strtoull(m, nullptr, 10);
  return flags == 0 ? 0 : 1;
}
CUresult cuDriverGetVersion(int* v) {
  *v = 13000;
  return 0;
}
CUresult cuDeviceGetCount(int* n) {
  *n = 1;
  return 0;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (ordinal != 0) return 101;  // CUDA_ERROR_INVALID_DEVICE
  *d = 0;
  return 0;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  CHECK(dev == 0 && len > 16);
  snprintf(name, len, "Fake GPU (host emulator)");
  return 0;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice dev) {
  CHECK(dev == 0);
  switch (attr) {
    case 16: *v = 132; return 0;  // multiprocessors
    case 75: *v = 9; return 0;    // compute capability major
    case 76: *v = 0; return 0;    // minor
  }
  return 1;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  CHECK(dev == 0);
  *bytes = mem_limit;
  return 0;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice dev) {
  CHECK(dev == 0);
  *ctx = fake_ctx;
  retained++;
  return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  CHECK(dev == 0 && retained > 0);
  retained--;
  return 0;
}
CUresult cuCtxSetCurrent(void* ctx) {
  CHECK(ctx == fake_ctx);
  current_ctx = ctx;
  return 0;
}
CUresult cuStreamCreate(void** s, unsigned int flags) {
  CHECK(current_ctx == fake_ctx);
  *s = fake_stream;
  return 0;
}
CUresult cuStreamDestroy_v2(void* s) {
  STREAM(s);
  return 0;
}
CUresult cuStreamSynchronize(void* s) {
  STREAM(s);
  return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
  CHECK(current_ctx == fake_ctx && n > 0);
  if (mem_used + n > mem_limit) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
  void* a = emu_malloc(n + 16);
  if (!a) return 2;
  *(size_t*)a = n;
  mem_used += n;
  *p = (CUdeviceptr)a + 16;
  return 0;
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
  CHECK(current_ctx == fake_ctx);
  *free_bytes = mem_limit - mem_used;
  *total = mem_limit;
  return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
  CHECK(p != 0);
  void* a = (void*)(p - 16);
  mem_used -= *(size_t*)a;
  emu_free(a);
  return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
  STREAM(s);
  memcpy((void*)dst, src, n);
  return 0;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
  STREAM(s);
  memcpy(dst, (void*)src, n);
  return 0;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
  STREAM(s);
  memmove((void*)dst, (void*)src, n);
  return 0;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, void* s) {
  STREAM(s);
  emu_memset32((void*)dst, v, n);
  return 0;
}
CUresult cuModuleLoadDataEx(void** mod, const void* image, unsigned int n, int* opts, void** vals) {
  CHECK(current_ctx == fake_ctx);
  const char* text = (const char*)image;
  bool has_log = false;
  for (unsigned i = 0; i < n; i++)
    if (opts[i] == 5) has_log = vals[i] != nullptr;  // CU_JIT_ERROR_LOG_BUFFER
  CHECK(has_log);
  if (!strstr(text, "\n.version 7.0\n") || !strstr(text, "\n.target sm_80\n")) {
    for (unsigned i = 0; i < n; i++)
      if (opts[i] == 5) snprintf((char*)vals[i], 64, "fake JIT: not PTX 7.0 for sm_80");
    return 218;  // CUDA_ERROR_INVALID_PTX
  }
  FakeModule* m = (FakeModule*)malloc(sizeof(FakeModule));
  m->text = strdup(text);
  *mod = m;
  return 0;
}
CUresult cuModuleUnload(void* mod) {
  FakeModule* m = (FakeModule*)mod;
  free(m->text);
  free(m);
  return 0;
}
CUresult cuModuleGetFunction(void** fn, void* mod, const char* name) {
  char pat[160];
  snprintf(pat, sizeof pat, ".entry %s(", name);
  if (!strstr(((FakeModule*)mod)->text, pat)) return 500;  // CUDA_ERROR_NOT_FOUND
  FakeFunction* f = (FakeFunction*)malloc(sizeof(FakeFunction));
  snprintf(f->name, sizeof f->name, "%s", name);
  *fn = f;
  return 0;
}
CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shmem, void* s, void** params, void** extra) {
  STREAM(s);
  CHECK(extra == nullptr && shmem == 0 && gx > 0 && gy > 0 && gz > 0 && gy < 65536 && gz < 65536);
  int rc = emu_launch(((FakeFunction*)fn)->name, gx, gy, gz, bx, by, bz, params);
  return rc == 0 ? 0 : 719;  // CUDA_ERROR_LAUNCH_FAILED
}
CUresult cuEventCreate(void** e, unsigned int flags) {
  CHECK(flags == 0);
  *e = malloc(8);
  return 0;
}
CUresult cuEventRecord(void* e, void* s) {
  STREAM(s);
  return 0;
}
CUresult cuEventSynchronize(void* e) { return 0; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
  CHECK(a != b);
  *ms = 1.5f;
  return 0;
}
CUresult cuEventDestroy_v2(void* e) {
  free(e);
  return 0;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
    case 719: *s = "CUDA_ERROR_LAUNCH_FAILED"; return 0;
  }
  return 1;
}

// cuBLAS.
int cublasCreate_v2(void** h) {
  CHECK(current_ctx == fake_ctx);
  *h = fake_handle;
  return 0;
}
int cublasDestroy_v2(void* h) { return h == fake_handle ? 0 : 7; }
int cublasSetStream_v2(void* h, void* s) { return h == fake_handle && s == fake_stream ? 0 : 7; }
int cublasGetVersion_v2(void* h, int* v) {
  *v = 130100;
  return h == fake_handle ? 0 : 7;
}
int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int atype,
                 int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc,
                 int compute, int algo) {
  if (h != fake_handle || compute != 68 || algo != -1 || atype != btype || (atype != 0 && atype != 14) ||
      (transa != 0 && transa != 1) || (transb != 0 && transb != 1) || *(const float*)alpha != 1.f)
    return 7;  // CUBLAS_STATUS_INVALID_VALUE
  return emu_gemm(transa, transb, m, n, k, (const float*)alpha, A, atype, lda, B, btype, ldb, (const float*)beta,
                  (float*)C, ctype, ldc);
}
}
