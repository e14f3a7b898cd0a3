//go:build linux

package cuda

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// libcuda is libcuda.so.1, opened but not yet initialised.
type libcuda struct {
	path string
	fn   struct {
		init, deviceGetCount, deviceGet, deviceGetName, deviceGetAttribute, deviceTotalMem uintptr
		primaryCtxRetain, primaryCtxRelease, ctxSetCurrent, driverGetVersion               uintptr
		streamCreate, streamDestroy, streamSynchronize                                     uintptr
		memAlloc, memFree, memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync, memsetD32    uintptr
		moduleLoadDataEx, moduleUnload, moduleGetFunction, launchKernel                    uintptr
		eventCreate, eventRecord, eventSynchronize, eventElapsedTime, eventDestroy         uintptr
		getErrorName, memGetInfo                                                           uintptr
	}
}

// libcudaPaths are tried in order: the loader's own search first.
var libcudaPaths = []string{
	"libcuda.so.1",
	"/usr/local/nvidia/lib64/libcuda.so.1",
	"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
	"/usr/lib64/libcuda.so.1",
	"/usr/lib/aarch64-linux-gnu/libcuda.so.1",
	"/usr/lib/wsl/lib/libcuda.so.1",
}

func openLibcuda(path string) (*libcuda, error) {
	paths := libcudaPaths
	if path != "" {
		paths = []string{path}
	}
	var first error
	for _, p := range paths {
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		l := &libcuda{path: p}
		f := &l.fn
		for _, s := range []struct {
			name     string
			fn       *uintptr
			optional bool
		}{
			{"cuInit", &f.init, false}, {"cuDeviceGetCount", &f.deviceGetCount, false}, {"cuDeviceGet", &f.deviceGet, false},
			{"cuDeviceGetName", &f.deviceGetName, false}, {"cuDeviceGetAttribute", &f.deviceGetAttribute, false},
			{"cuDeviceTotalMem_v2", &f.deviceTotalMem, false}, {"cuDevicePrimaryCtxRetain", &f.primaryCtxRetain, false},
			{"cuDevicePrimaryCtxRelease_v2", &f.primaryCtxRelease, false}, {"cuCtxSetCurrent", &f.ctxSetCurrent, false},
			{"cuDriverGetVersion", &f.driverGetVersion, true}, {"cuStreamCreate", &f.streamCreate, false},
			{"cuStreamDestroy_v2", &f.streamDestroy, false}, {"cuStreamSynchronize", &f.streamSynchronize, false},
			{"cuMemAlloc_v2", &f.memAlloc, false}, {"cuMemFree_v2", &f.memFree, false},
			{"cuMemcpyHtoDAsync_v2", &f.memcpyHtoDAsync, false}, {"cuMemcpyDtoHAsync_v2", &f.memcpyDtoHAsync, false},
			{"cuMemcpyDtoDAsync_v2", &f.memcpyDtoDAsync, false}, {"cuMemsetD32Async", &f.memsetD32, false},
			{"cuModuleLoadDataEx", &f.moduleLoadDataEx, false}, {"cuModuleUnload", &f.moduleUnload, false},
			{"cuModuleGetFunction", &f.moduleGetFunction, false}, {"cuLaunchKernel", &f.launchKernel, false},
			{"cuEventCreate", &f.eventCreate, true}, {"cuEventRecord", &f.eventRecord, true},
			{"cuEventSynchronize", &f.eventSynchronize, true}, {"cuEventElapsedTime", &f.eventElapsedTime, true},
			{"cuEventDestroy_v2", &f.eventDestroy, true}, {"cuGetErrorName", &f.getErrorName, true},
			{"cuMemGetInfo_v2", &f.memGetInfo, true},
		} {
			a, err := purego.Dlsym(h, s.name)
			if err != nil && !s.optional {
				return nil, fmt.Errorf("%s has no %s (driver too old?): %v", p, s.name, err)
			}
			*s.fn = a
		}
		return l, nil
	}
	return nil, first
}

// call invokes a driver function and turns its CUresult into an Error.
// Arguments that are Go pointers converted to uintptr at the call site
// (uintptr(unsafe.Pointer(&x))) are moved to the heap and kept alive for
// the call, as for purego.SyscallN itself: without the directive a pointer
// to a stack variable goes stale when the stack grows before the C call.
//
//go:uintptrescapes
func (l *libcuda) call(name string, fn uintptr, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if code := uint32(r); code != 0 { // CUresult is a C int: the upper half of the register is junk
		return &Error{Call: name, Code: int(code), Name: l.errorName(code)}
	}
	return nil
}

func (l *libcuda) errorName(code uint32) string {
	if l.fn.getErrorName == 0 {
		if n, ok := cudaErrorNames[int(code)]; ok {
			return n
		}
		return "CUDA_ERROR_UNKNOWN"
	}
	var p *byte
	r, _, _ := purego.SyscallN(l.fn.getErrorName, uintptr(code), uintptr(unsafe.Pointer(&p)))
	if uint32(r) == 0 && p != nil {
		return cString(p, 128)
	}
	if n, ok := cudaErrorNames[int(code)]; ok {
		return n
	}
	return "CUDA_ERROR_UNKNOWN"
}

// cudaDevice is the driver on a real GPU.
type cudaDevice struct {
	l           *libcuda
	blas        *cublas
	dev         int32 // the CUdevice
	ctx, stream uintptr
	modules     []uintptr
	fns         [numKernels]uintptr
	events      [2]uintptr
	desc        string
	alpha, beta float32 // host scalars read by cublasGemmEx
}

// Device attributes (CUdevice_attribute).
const (
	attrSMCount  = 16
	attrCCMajor  = 75
	attrCCMinor  = 76
	jitErrBuf    = 5 // CU_JIT_ERROR_LOG_BUFFER
	jitErrBufLen = 6 // CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
)

// openDevice initialises the driver on the calling (locked) thread: the
// device's primary context, a stream, the PTX modules, cuBLAS.
func openDevice(l *libcuda, ordinal int, cublasPath string) (d driver, err error) {
	c := &cudaDevice{l: l}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	f := &l.fn
	if err := l.call("cuInit", f.init, 0); err != nil {
		return nil, err
	}
	var count, dev int32
	if err := l.call("cuDeviceGetCount", f.deviceGetCount, uintptr(unsafe.Pointer(&count))); err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, &Error{Call: "cuDeviceGetCount", Name: "CUDA_ERROR_NO_DEVICE", Code: errNoDevice, Info: "0 devices"}
	}
	if ordinal < 0 || int(count) <= ordinal {
		return nil, fmt.Errorf("no CUDA device %d (the driver sees %d)", ordinal, count)
	}
	if err := l.call("cuDeviceGet", f.deviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(ordinal)); err != nil {
		return nil, err
	}
	c.dev = dev
	var name [256]byte
	if err := l.call("cuDeviceGetName", f.deviceGetName, uintptr(unsafe.Pointer(&name[0])), 255, uintptr(dev)); err != nil {
		return nil, err
	}
	attr := func(a int) (int32, error) {
		var v int32
		err := l.call("cuDeviceGetAttribute", f.deviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(a), uintptr(dev))
		return v, err
	}
	major, err := attr(attrCCMajor)
	if err != nil {
		return nil, err
	}
	minor, err := attr(attrCCMinor)
	if err != nil {
		return nil, err
	}
	sms, err := attr(attrSMCount)
	if err != nil {
		return nil, err
	}
	var mem uintptr
	if err := l.call("cuDeviceTotalMem_v2", f.deviceTotalMem, uintptr(unsafe.Pointer(&mem)), uintptr(dev)); err != nil {
		return nil, err
	}
	if major < 8 {
		return nil, fmt.Errorf("CUDA device %d (%s) is sm_%d%d; the kernels need sm_80 or newer", ordinal, cString(&name[0], 256), major, minor)
	}
	var version int32
	if f.driverGetVersion != 0 {
		if err := l.call("cuDriverGetVersion", f.driverGetVersion, uintptr(unsafe.Pointer(&version))); err != nil {
			return nil, err
		}
	}
	if err := l.call("cuDevicePrimaryCtxRetain", f.primaryCtxRetain, uintptr(unsafe.Pointer(&c.ctx)), uintptr(dev)); err != nil {
		return nil, err
	}
	if err := l.call("cuCtxSetCurrent", f.ctxSetCurrent, c.ctx); err != nil {
		return nil, err
	}
	if err := l.call("cuStreamCreate", f.streamCreate, uintptr(unsafe.Pointer(&c.stream)), 0); err != nil {
		return nil, err
	}
	for i := range c.events {
		if f.eventCreate == 0 {
			break
		}
		if err := l.call("cuEventCreate", f.eventCreate, uintptr(unsafe.Pointer(&c.events[i])), 0); err != nil {
			return nil, err
		}
	}
	if err := c.loadModules(); err != nil {
		return nil, err
	}
	if c.blas, err = openCublas(cublasPath); err != nil {
		return nil, err
	}
	if err := c.blas.init(c.stream); err != nil {
		return nil, err
	}
	c.desc = fmt.Sprintf("%s, sm_%d%d, %d SMs, %.0f GiB, driver API %d.%d, %s", cString(&name[0], 256), major, minor, sms,
		float64(mem)/(1<<30), version/1000, version%1000/10, c.blas.describe())
	return c, nil
}

// loadModules JIT-compiles every embedded PTX file and finds each kernel.
func (c *cudaDevice) loadModules() error {
	files, err := fs.Glob(ptxFS, "ptx/*.ptx")
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, name := range files {
		src, err := ptxFS.ReadFile(name)
		if err != nil {
			return err
		}
		image := append(src[:len(src):len(src)], 0)
		logBuf := make([]byte, 16<<10)
		opts := []uint32{jitErrBuf, jitErrBufLen}
		vals := []uintptr{uintptr(unsafe.Pointer(&logBuf[0])), uintptr(len(logBuf))}
		var mod uintptr
		err = c.l.call("cuModuleLoadDataEx", c.l.fn.moduleLoadDataEx, uintptr(unsafe.Pointer(&mod)),
			uintptr(unsafe.Pointer(&image[0])), uintptr(len(opts)), uintptr(unsafe.Pointer(&opts[0])), uintptr(unsafe.Pointer(&vals[0])))
		if err != nil {
			e := err.(*Error)
			e.Call = fmt.Sprintf("cuModuleLoadDataEx(%s)", filepath.Base(name))
			e.Info = strings.TrimSpace(cString(&logBuf[0], len(logBuf)))
			return e
		}
		c.modules = append(c.modules, mod)
	}
	for k := kernel(0); k < numKernels; k++ {
		cname := append([]byte(kernelInfo[k].name), 0)
		for _, mod := range c.modules {
			var fn uintptr
			r, _, _ := purego.SyscallN(c.l.fn.moduleGetFunction, uintptr(unsafe.Pointer(&fn)), mod, uintptr(unsafe.Pointer(&cname[0])))
			if uint32(r) == 0 {
				c.fns[k] = fn
				break
			}
		}
		if c.fns[k] == 0 {
			return fmt.Errorf("cuModuleGetFunction: no kernel %s in the embedded PTX", k)
		}
	}
	return nil
}

func (c *cudaDevice) describe() string { return c.desc }

func (c *cudaDevice) malloc(n uintptr) (uintptr, error) {
	var a uintptr
	err := c.l.call("cuMemAlloc_v2", c.l.fn.memAlloc, uintptr(unsafe.Pointer(&a)), n)
	return a, err
}

// memInfo is cuMemGetInfo: the device's free and total bytes.
func (c *cudaDevice) memInfo() (free, total uint64, err error) {
	if c.l.fn.memGetInfo == 0 {
		return 0, 0, fmt.Errorf("cuMemGetInfo_v2 is missing from %s", c.l.path)
	}
	err = c.l.call("cuMemGetInfo_v2", c.l.fn.memGetInfo, uintptr(unsafe.Pointer(&free)), uintptr(unsafe.Pointer(&total)))
	return free, total, err
}

func (c *cudaDevice) free(a uintptr) error { return c.l.call("cuMemFree_v2", c.l.fn.memFree, a) }

func (c *cudaDevice) htod(dst uintptr, src unsafe.Pointer, n uintptr) error {
	if err := c.l.call("cuMemcpyHtoDAsync_v2", c.l.fn.memcpyHtoDAsync, dst, uintptr(src), n, c.stream); err != nil {
		return err
	}
	return c.sync()
}

func (c *cudaDevice) dtoh(dst unsafe.Pointer, src uintptr, n uintptr) error {
	if err := c.l.call("cuMemcpyDtoHAsync_v2", c.l.fn.memcpyDtoHAsync, uintptr(dst), src, n, c.stream); err != nil {
		return err
	}
	return c.sync()
}

func (c *cudaDevice) dtod(dst, src uintptr, n uintptr) error {
	return c.l.call("cuMemcpyDtoDAsync_v2", c.l.fn.memcpyDtoDAsync, dst, src, n, c.stream)
}

func (c *cudaDevice) memset32(dst uintptr, v uint32, n uintptr) error {
	return c.l.call("cuMemsetD32Async", c.l.fn.memsetD32, dst, uintptr(v), n, c.stream)
}

func (c *cudaDevice) launch(k kernel, grid, block dim3, p *params) error {
	err := c.l.call("cuLaunchKernel", c.l.fn.launchKernel, c.fns[k],
		uintptr(grid.x), uintptr(grid.y), uintptr(grid.z), uintptr(block.x), uintptr(block.y), uintptr(block.z),
		0, c.stream, uintptr(p.pointers()), 0)
	if err != nil {
		err.(*Error).Call = "cuLaunchKernel(" + k.String() + ")"
	}
	return err
}

func (c *cudaDevice) gemm(g *gemmCall) error {
	c.alpha, c.beta = 1, g.beta
	return c.blas.gemm(g, &c.alpha, &c.beta)
}

func (c *cudaDevice) sync() error {
	return c.l.call("cuStreamSynchronize", c.l.fn.streamSynchronize, c.stream)
}

var errNoEvents = errorf("this driver has no CUDA events")

func (c *cudaDevice) record(i int) error {
	if c.events[i] == 0 {
		return errNoEvents
	}
	return c.l.call("cuEventRecord", c.l.fn.eventRecord, c.events[i], c.stream)
}

func (c *cudaDevice) elapsed() (float32, error) {
	if c.events[1] == 0 || c.l.fn.eventElapsedTime == 0 {
		return 0, errNoEvents
	}
	if err := c.l.call("cuEventSynchronize", c.l.fn.eventSynchronize, c.events[1]); err != nil {
		return 0, err
	}
	var ms float32
	err := c.l.call("cuEventElapsedTime", c.l.fn.eventElapsedTime, uintptr(unsafe.Pointer(&ms)), c.events[0], c.events[1])
	return ms, err
}

// close releases what openDevice acquired (also after a partial open).
func (c *cudaDevice) close() error {
	f := &c.l.fn
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if c.blas != nil {
		keep(c.blas.destroy())
	}
	for _, m := range c.modules {
		keep(c.l.call("cuModuleUnload", f.moduleUnload, m))
	}
	for _, e := range c.events {
		if e != 0 && f.eventDestroy != 0 {
			keep(c.l.call("cuEventDestroy_v2", f.eventDestroy, e))
		}
	}
	if c.stream != 0 {
		keep(c.l.call("cuStreamDestroy_v2", f.streamDestroy, c.stream))
	}
	if c.ctx != 0 {
		keep(c.l.call("cuDevicePrimaryCtxRelease_v2", f.primaryCtxRelease, uintptr(c.dev)))
	}
	c.modules, c.stream, c.ctx, c.blas = nil, 0, 0, nil
	return first
}

// cublas is libcublas opened through purego.
type cublas struct {
	path                                      string
	handle                                    uintptr
	create, destroyFn, setStream, gemmEx, ver uintptr
	version                                   int32
}

// cublasCandidates lists where to look for cuBLAS, most specific first;
// Python's wheels (pythonCublas) come after these.
func cublasCandidates() []string {
	c := []string{"libcublas.so.13", "libcublas.so.12"}
	for _, pattern := range []string{
		"/usr/local/cuda/lib64/libcublas.so.1[32]",
		"/usr/local/cuda/targets/*/lib/libcublas.so.1[32]",
		"/usr/local/cuda-*/lib64/libcublas.so.1[32]",
		"/usr/local/lib/python3*/*-packages/nvidia/*/lib/libcublas.so.1[32]",
		"/usr/lib/python3*/*-packages/nvidia/*/lib/libcublas.so.1[32]",
		"/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib/libcublas.so.1[32]",
		"/opt/conda/lib/python3*/site-packages/nvidia/*/lib/libcublas.so.1[32]",
	} {
		m, _ := filepath.Glob(pattern)
		sort.Sort(sort.Reverse(sort.StringSlice(m))) // .13 before .12
		c = append(c, m...)
	}
	return c
}

// pythonCublas asks python3 where the nvidia-cublas wheel put the library
// (nvidia/cu13/lib for CUDA 13 wheels, nvidia/cublas/lib before).
func pythonCublas() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const script = `
import glob, os
try:
    import nvidia
    for p in nvidia.__path__:
        for f in sorted(glob.glob(os.path.join(p, "*", "lib", "libcublas.so.1[23]")), reverse=True):
            print(f)
except Exception:
    pass
`
	out, err := exec.CommandContext(ctx, "python3", "-c", script).Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// openCublas opens the explicit path, or the first cuBLAS found.
func openCublas(explicit string) (*cublas, error) {
	var tried []string
	var first error
	try := func(paths []string) *cublas {
		for _, p := range paths {
			tried = append(tried, p)
			b, err := loadCublas(p)
			if err == nil {
				return b
			}
			if first == nil {
				first = err
			}
		}
		return nil
	}
	if explicit != "" {
		if b := try([]string{explicit}); b != nil {
			return b, nil
		}
	} else if b := try(cublasCandidates()); b != nil {
		return b, nil
	} else if b := try(pythonCublas()); b != nil {
		return b, nil
	}
	list := strings.Join(tried[:min(len(tried), 3)], ", ")
	if len(tried) > 3 {
		list += fmt.Sprintf(" and %d more", len(tried)-3)
	}
	return nil, fmt.Errorf("cuBLAS not found: tried %s (%v); set DLLM_CUBLAS=/path/to/libcublas.so.13", list, first)
}

func loadCublas(p string) (*cublas, error) {
	if strings.Contains(p, "/") {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
		// cuBLAS needs cublasLt, from its own folder.
		lt := filepath.Join(filepath.Dir(p), strings.Replace(filepath.Base(p), "libcublas.", "libcublasLt.", 1))
		if _, err := os.Stat(lt); err == nil {
			purego.Dlopen(lt, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		}
	}
	h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, err
	}
	b := &cublas{path: p}
	for _, s := range []struct {
		name string
		fn   *uintptr
	}{{"cublasCreate_v2", &b.create}, {"cublasDestroy_v2", &b.destroyFn}, {"cublasSetStream_v2", &b.setStream},
		{"cublasGemmEx", &b.gemmEx}, {"cublasGetVersion_v2", &b.ver}} {
		a, err := purego.Dlsym(h, s.name)
		if err != nil {
			return nil, fmt.Errorf("cuBLAS at %s has no %s: %v", p, s.name, err)
		}
		*s.fn = a
	}
	return b, nil
}

func (b *cublas) init(stream uintptr) error {
	r, _, _ := purego.SyscallN(b.create, uintptr(unsafe.Pointer(&b.handle)))
	if err := cublasError("cublasCreate_v2", uint32(r)); err != nil {
		return err
	}
	r, _, _ = purego.SyscallN(b.setStream, b.handle, stream)
	if err := cublasError("cublasSetStream_v2", uint32(r)); err != nil {
		return err
	}
	r, _, _ = purego.SyscallN(b.ver, b.handle, uintptr(unsafe.Pointer(&b.version)))
	return cublasError("cublasGetVersion_v2", uint32(r))
}

func (b *cublas) describe() string {
	v := b.version
	return fmt.Sprintf("cuBLAS %d.%d.%d", v/10000, v%10000/100, v%100)
}

func (b *cublas) destroy() error {
	if b.handle == 0 {
		return nil
	}
	r, _, _ := purego.SyscallN(b.destroyFn, b.handle)
	b.handle = 0
	return cublasError("cublasDestroy_v2", uint32(r))
}

func op(t bool) uintptr {
	if t {
		return 1 // CUBLAS_OP_T
	}
	return 0 // CUBLAS_OP_N
}

// gemm is cublasGemmEx with float32 C and CUBLAS_COMPUTE_32F (no TF32:
// the handle keeps CUBLAS_DEFAULT_MATH).
func (b *cublas) gemm(g *gemmCall, alpha, beta *float32) error {
	algo := int32(cublasGemmDflt)
	r, _, _ := purego.SyscallN(b.gemmEx, b.handle, op(g.transA), op(g.transB),
		uintptr(g.m), uintptr(g.n), uintptr(g.k), uintptr(unsafe.Pointer(alpha)),
		g.a, uintptr(g.inType), uintptr(g.lda), g.b, uintptr(g.inType), uintptr(g.ldb),
		uintptr(unsafe.Pointer(beta)), g.c, cudaR32F, uintptr(g.ldc), cublasCompute32F, uintptr(uint32(algo)))
	return cublasError("cublasGemmEx", uint32(r))
}
