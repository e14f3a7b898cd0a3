//go:build linux

package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The emulator driver runs the kernels' C++ text on the host (emu/emu.cc,
// one fiber per CUDA thread) behind the same driver interface as the GPU,
// so the whole Backend (argument packing, launch shapes, scratch, the
// cuBLAS operand mapping) is checked against kernels/cpu without a GPU.

var (
	libMu    sync.Mutex
	libBuilt = map[string]string{}
)

// buildLib compiles emu/<source> (the emulator and the kernels, or the fake
// libcuda on top of them) into a shared library, cached in the temporary
// folder by the hash of the sources. It skips the test without clang-14.
func buildLib(t testing.TB, source string) string {
	t.Helper()
	libMu.Lock()
	defer libMu.Unlock()
	if p, ok := libBuilt[source]; ok {
		return p
	}
	clang := os.Getenv("CLANG")
	if clang == "" {
		clang = "clang-14"
	}
	if _, err := exec.LookPath(clang); err != nil {
		t.Skipf("%s not found (apt-get install clang-14): the emulator tests need it", clang)
	}
	files, _ := filepath.Glob("src/*")
	emu, _ := filepath.Glob("emu/*")
	h := sha256.New()
	h.Write([]byte(source))
	for _, f := range append(files, emu...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	out := filepath.Join(os.TempDir(), "dllm-"+strings.TrimSuffix(source, ".cc")+"-"+hex.EncodeToString(h.Sum(nil))[:16]+".so")
	if _, err := os.Stat(out); err != nil {
		tmp := fmt.Sprintf("%s.%d", out, os.Getpid())
		cmd := exec.Command(clang, "-x", "c++", "-std=c++17", "-O1", "-fPIC", "-shared", "-o", tmp, "emu/"+source, "-lm")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building emu/%s: %v\n%s", source, err, b)
		}
		if err := os.Rename(tmp, out); err != nil {
			t.Fatal(err)
		}
	}
	libBuilt[source] = out
	return out
}

func buildEmu(t testing.TB) string { return buildLib(t, "emu.cc") }

type emuDriver struct {
	launchFn, mallocFn, freeFn, memcpyFn, memsetFn, gemmFn uintptr
	names                                                  [numKernels][]byte
	alpha, beta                                            float32
	launches                                               int
}

func openEmu(path string) (driver, error) {
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, err
	}
	d := &emuDriver{}
	for _, s := range []struct {
		name string
		fn   *uintptr
	}{{"emu_launch", &d.launchFn}, {"emu_malloc", &d.mallocFn}, {"emu_free", &d.freeFn},
		{"emu_memcpy", &d.memcpyFn}, {"emu_memset32", &d.memsetFn}, {"emu_gemm", &d.gemmFn}} {
		if *s.fn, err = purego.Dlsym(h, s.name); err != nil {
			return nil, err
		}
	}
	for k := range d.names {
		d.names[k] = append([]byte(kernelInfo[k].name), 0)
	}
	return d, nil
}

func (d *emuDriver) describe() string { return "host emulator" }

func (d *emuDriver) malloc(n uintptr) (uintptr, error) {
	a, _, _ := purego.SyscallN(d.mallocFn, n)
	if a == 0 {
		return 0, &Error{Call: "emu_malloc", Name: "CUDA_ERROR_OUT_OF_MEMORY", Code: errOutOfMemory}
	}
	return a, nil
}

func (d *emuDriver) free(a uintptr) error { purego.SyscallN(d.freeFn, a); return nil }

func (d *emuDriver) htod(dst uintptr, src unsafe.Pointer, n uintptr) error {
	purego.SyscallN(d.memcpyFn, dst, uintptr(src), n)
	return nil
}

func (d *emuDriver) dtoh(dst unsafe.Pointer, src uintptr, n uintptr) error {
	purego.SyscallN(d.memcpyFn, uintptr(dst), src, n)
	return nil
}

func (d *emuDriver) dtod(dst, src uintptr, n uintptr) error {
	purego.SyscallN(d.memcpyFn, dst, src, n)
	return nil
}

func (d *emuDriver) memset32(dst uintptr, v uint32, n uintptr) error {
	purego.SyscallN(d.memsetFn, dst, uintptr(v), n)
	return nil
}

func (d *emuDriver) launch(k kernel, grid, block dim3, p *params) error {
	d.launches++
	r, _, _ := purego.SyscallN(d.launchFn, uintptr(unsafe.Pointer(&d.names[k][0])),
		uintptr(grid.x), uintptr(grid.y), uintptr(grid.z), uintptr(block.x), uintptr(block.y), uintptr(block.z),
		uintptr(p.pointers()))
	if code := int32(r); code != 0 {
		return &Error{Call: "emu_launch(" + k.String() + ")", Name: "EMU_ERROR", Code: int(code)}
	}
	return nil
}

func (d *emuDriver) gemm(g *gemmCall) error {
	d.alpha, d.beta = 1, g.beta
	r, _, _ := purego.SyscallN(d.gemmFn, op(g.transA), op(g.transB), uintptr(g.m), uintptr(g.n), uintptr(g.k),
		uintptr(unsafe.Pointer(&d.alpha)), g.a, uintptr(g.inType), uintptr(g.lda), g.b, uintptr(g.inType), uintptr(g.ldb),
		uintptr(unsafe.Pointer(&d.beta)), g.c, cudaR32F, uintptr(g.ldc))
	return cublasError("emu_gemm", uint32(r))
}

func (d *emuDriver) sync() error               { return nil }
func (d *emuDriver) record(int) error          { return nil }
func (d *emuDriver) elapsed() (float32, error) { return 0, nil }
func (d *emuDriver) close() error              { return nil }

func newEmuBackend(t testing.TB, matmul string) *Backend {
	return newEmuWrapped(t, matmul, nil)
}

// newEmuWrapped is newEmuBackend on the emulator's driver as wrap (nil:
// none) wraps it.
func newEmuWrapped(t testing.TB, matmul string, wrap func(driver) driver) *Backend {
	path := buildEmu(t)
	fp32, err := parseMatmul(matmul)
	if err != nil {
		t.Fatal(err)
	}
	be, err := newBackend(fp32, func() (driver, error) {
		d, err := openEmu(path)
		if err != nil || wrap == nil {
			return d, err
		}
		return wrap(d), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	be.headChunk = 1 << 14 // HeadLoss in several vocabulary chunks
	return be
}
