// Command gen compiles the CUDA C kernels of kernels/cuda/src to the PTX
// files embedded in the package (kernels/cuda/ptx), with Debian's clang-14
// and no CUDA toolkit: go generate ./kernels/cuda runs it. With -check it
// compiles into a temporary folder and fails when the result differs from
// the committed PTX (CI runs that). With -ptxas PATH it assembles every
// committed PTX for sm_80 and sm_90 with NVIDIA's ptxas -v and prints the
// registers, shared memory and spills of each kernel; it fails when ptxas
// rejects a file or a kernel spills or has a stack frame (local memory).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Flags is the whole recipe (see kernels/cuda/README.md): CUDA device code
// only, no CUDA headers or libdevice, sm_80, PTX ISA 7.0. run adds
// --cuda-path at an empty folder, so that an installed CUDA (whose version
// clang-14 may not know) changes nothing.
var Flags = []string{
	"-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib", "--cuda-gpu-arch=sm_80",
	"-Xclang", "-target-feature", "-Xclang", "+ptx70",
	"-std=c++17", "-O3", "-Wall", "-Werror", "-S",
}

func main() {
	check := flag.Bool("check", false, "compile to a temporary folder and compare with the committed PTX")
	clang := flag.String("clang", envOr("CLANG", "clang-14"), "the clang to use")
	dir := flag.String("dir", "", "the kernels/cuda folder (default: . or kernels/cuda, whichever has src/)")
	ptxas := flag.String("ptxas", "", "assemble the committed PTX with this ptxas instead of compiling")
	flag.Parse()
	var err error
	if *ptxas != "" {
		err = assemble(*dir, *ptxas)
	} else {
		err = run(*dir, *clang, *check)
	}
	if err != nil {
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

func chdir(dir string) error {
	if dir == "" {
		dir = "."
		if _, err := os.Stat("src"); err != nil {
			dir = filepath.Join("kernels", "cuda")
		}
	}
	return os.Chdir(dir)
}

func run(dir, clang string, check bool) error {
	if err := chdir(dir); err != nil {
		return err
	}
	noCUDA, err := os.MkdirTemp("", "dllm-nocuda")
	if err != nil {
		return err
	}
	defer os.RemoveAll(noCUDA)
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
		args := append(append([]string{}, Flags...), "--cuda-path="+noCUDA, "-o", dst, src)
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

var (
	entryRE = regexp.MustCompile(`Compiling entry function '(\w+)' for '(sm_\d+)'`)
	frameRE = regexp.MustCompile(`(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads`)
	usedRE  = regexp.MustCompile(`Used (\d+) registers(?:, (\d+) bytes smem)?`)
)

type usage struct{ regs, smem, frame, spillSt, spillLd int }

// assemble runs ptxas -v on every committed PTX file for each target and
// prints one row per kernel.
func assemble(dir, ptxas string) error {
	if err := chdir(dir); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join("ptx", "*.ptx"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no ptx/*.ptx in %s", dir)
	}
	sort.Strings(files)
	targets := []string{"sm_80", "sm_90"}
	got := map[string]map[string]usage{}
	var names, bad []string
	for _, f := range files {
		for _, arch := range targets {
			var out bytes.Buffer
			cmd := exec.Command(ptxas, "-v", "-arch="+arch, "-o", os.DevNull, f)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("ptxas -arch=%s %s: %v\n%s", arch, f, err, out.String())
			}
			var cur string
			for _, line := range strings.Split(out.String(), "\n") {
				if m := entryRE.FindStringSubmatch(line); m != nil {
					cur = m[1]
					if got[cur] == nil {
						got[cur] = map[string]usage{}
						names = append(names, cur)
					}
					continue
				}
				if cur == "" {
					continue
				}
				u := got[cur][arch]
				if m := frameRE.FindStringSubmatch(line); m != nil {
					u.frame, u.spillSt, u.spillLd = atoi(m[1]), atoi(m[2]), atoi(m[3])
				}
				if m := usedRE.FindStringSubmatch(line); m != nil {
					u.regs, u.smem = atoi(m[1]), atoi(m[2])
				}
				got[cur][arch] = u
			}
		}
	}
	sort.Strings(names)
	fmt.Printf("%-22s %12s %12s %10s %s\n", "kernel", "regs sm_80", "regs sm_90", "smem B", "stack/spills (sm_80; sm_90)")
	for _, n := range names {
		a, b := got[n]["sm_80"], got[n]["sm_90"]
		fmt.Printf("%-22s %12d %12d %10d %d/%d/%d; %d/%d/%d\n", n, a.regs, b.regs, a.smem,
			a.frame, a.spillSt, a.spillLd, b.frame, b.spillSt, b.spillLd)
		if a.frame+a.spillSt+a.spillLd+b.frame+b.spillSt+b.spillLd > 0 {
			bad = append(bad, n)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("kernels with a stack frame or register spills (local memory): %s", strings.Join(bad, ", "))
	}
	fmt.Printf("ptxas: %d files, %d kernels assembled for %s, no stack frames or spills\n", len(files), len(names), strings.Join(targets, " and "))
	return nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
