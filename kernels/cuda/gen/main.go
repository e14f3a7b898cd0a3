// Command gen compiles the CUDA C kernels of kernels/cuda/src to the PTX
// files embedded in the package (kernels/cuda/ptx), with Debian's clang-14
// and no CUDA toolkit: go generate ./kernels/cuda runs it. With -check it
// compiles into a temporary folder and fails when the result differs from
// the committed PTX (CI runs that).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Flags is the whole recipe (see kernels/cuda/README.md): CUDA device code
// only, no CUDA headers or libdevice, sm_80, PTX ISA 7.0.
var Flags = []string{
	"-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib", "--cuda-gpu-arch=sm_80",
	"-Xclang", "-target-feature", "-Xclang", "+ptx70",
	"-std=c++17", "-O3", "-Wall", "-Werror", "-S",
}

func main() {
	check := flag.Bool("check", false, "compile to a temporary folder and compare with the committed PTX")
	clang := flag.String("clang", envOr("CLANG", "clang-14"), "the clang to use")
	dir := flag.String("dir", "", "the kernels/cuda folder (default: . or kernels/cuda, whichever has src/)")
	flag.Parse()
	if err := run(*dir, *clang, *check); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(dir, clang string, check bool) error {
	if dir == "" {
		dir = "."
		if _, err := os.Stat("src"); err != nil {
			dir = filepath.Join("kernels", "cuda")
		}
	}
	if err := os.Chdir(dir); err != nil {
		return err
	}
	srcs, err := filepath.Glob(filepath.Join("src", "*.cu"))
	if err != nil || len(srcs) == 0 {
		return fmt.Errorf("no src/*.cu in %s", dir)
	}
	sort.Strings(srcs)
	out := "ptx"
	if check {
		tmp, err := os.MkdirTemp("", "dllm-ptx")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		out = tmp
	}
	var stale []string
	for _, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".cu") + ".ptx"
		dst := filepath.Join(out, name)
		args := append(append([]string{}, Flags...), "-o", dst, src)
		cmd := exec.Command(clang, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %v", clang, strings.Join(args, " "), err)
		}
		ptx, err := os.ReadFile(dst)
		if err != nil {
			return err
		}
		if !bytes.Contains(ptx, []byte("\n.version 7.0\n")) || !bytes.Contains(ptx, []byte("\n.target sm_80\n")) {
			return fmt.Errorf("%s: clang did not emit .version 7.0 / .target sm_80", dst)
		}
		if check {
			old, err := os.ReadFile(filepath.Join("ptx", name))
			if err != nil || !bytes.Equal(old, ptx) {
				stale = append(stale, name)
			}
		}
	}
	if check {
		committed, _ := filepath.Glob(filepath.Join("ptx", "*.ptx"))
		if len(committed) != len(srcs) {
			stale = append(stale, fmt.Sprintf("(%d PTX files for %d sources)", len(committed), len(srcs)))
		}
		if len(stale) > 0 {
			return fmt.Errorf("committed PTX differs from a fresh build of src/: %s; run go generate ./kernels/cuda", strings.Join(stale, ", "))
		}
		fmt.Printf("PTX up to date: %d files\n", len(srcs))
	}
	return nil
}
