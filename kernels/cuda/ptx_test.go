package cuda

import (
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"
)

var (
	entryRE = regexp.MustCompile(`(?m)^\.visible \.entry (\w+)\(\s*([^)]*)\)`)
	paramRE = regexp.MustCompile(`\.param \.(\w+) \w+`)
)

// ptxEntries parses the embedded PTX: every .entry and its .param types.
func ptxEntries(t *testing.T) map[string][]string {
	t.Helper()
	files, err := fs.Glob(ptxFS, "ptx/*.ptx")
	if err != nil || len(files) == 0 {
		t.Fatalf("no embedded PTX: %v", err)
	}
	entries := map[string][]string{}
	for _, f := range files {
		b, _ := ptxFS.ReadFile(f)
		src := string(b)
		if !strings.Contains(src, "\n.version 7.0\n") || !strings.Contains(src, "\n.target sm_80\n") {
			t.Errorf("%s: not PTX ISA 7.0 for sm_80", f)
		}
		for _, m := range entryRE.FindAllStringSubmatch(src, -1) {
			var types []string
			for _, p := range paramRE.FindAllStringSubmatch(m[2], -1) {
				types = append(types, p[1])
			}
			if _, dup := entries[m[1]]; dup {
				t.Errorf("entry %s defined twice", m[1])
			}
			entries[m[1]] = types
		}
	}
	return entries
}

// TestPTXEntries: every kernel the Go side launches is an entry of the
// embedded PTX, with the parameter types its launches pack.
func TestPTXEntries(t *testing.T) {
	entries := ptxEntries(t)
	for k := kernel(0); k < numKernels; k++ {
		info := kernelInfo[k]
		types, ok := entries[info.name]
		if !ok {
			t.Errorf("no .entry %s in the PTX", info.name)
			continue
		}
		if len(types) != len(info.sig) {
			t.Errorf("%s: PTX has %d parameters, Go packs %d (%s)", info.name, len(types), len(info.sig), info.sig)
			continue
		}
		for i, c := range info.sig {
			want := map[rune][]string{'p': {"u64", "b64"}, 'q': {"u64", "s64", "b64"}, 'i': {"u32", "s32", "b32"}, 'f': {"f32"}}[c]
			found := false
			for _, w := range want {
				found = found || types[i] == w
			}
			if !found {
				t.Errorf("%s parameter %d: PTX .%s, Go packs class %c", info.name, i, types[i], c)
			}
		}
	}
	if len(entries) != int(numKernels) {
		t.Errorf("%d entries in the PTX, %d kernels in kernelInfo", len(entries), numKernels)
	}
}

// TestEmulatorTable: the host emulator registers every kernel.
func TestEmulatorTable(t *testing.T) {
	b, err := os.ReadFile("emu/emu.cc")
	if err != nil {
		t.Fatal(err)
	}
	reg := map[string]bool{}
	for _, m := range regexp.MustCompile(`REG\((\w+)\)`).FindAllStringSubmatch(string(b), -1) {
		reg[m[1]] = true
	}
	for k := kernel(0); k < numKernels; k++ {
		if !reg[kernelInfo[k].name] {
			t.Errorf("emu/emu.cc does not register %s", kernelInfo[k].name)
		}
	}
}

// TestPTXSources: one PTX file per source.
func TestPTXSources(t *testing.T) {
	srcs, _ := fs.Glob(os.DirFS("src"), "*.cu")
	ptx, _ := fs.Glob(ptxFS, "ptx/*.ptx")
	if len(srcs) != len(ptx) {
		t.Errorf("%d sources, %d PTX files: run go generate ./kernels/cuda", len(srcs), len(ptx))
	}
	for _, s := range srcs {
		if _, err := ptxFS.ReadFile("ptx/" + strings.TrimSuffix(s, ".cu") + ".ptx"); err != nil {
			t.Errorf("no PTX for src/%s", s)
		}
	}
}
