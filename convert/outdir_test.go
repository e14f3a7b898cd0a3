package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// TestMain lets a test re-run this binary as a run that dies between the two
// renames of a checkpoint replacement (DLLM_TEST_CRASH_ASIDE=out,data).
func TestMain(m *testing.M) {
	if spec := os.Getenv("DLLM_TEST_CRASH_ASIDE"); spec != "" {
		out, data, _ := strings.Cut(spec, ",")
		testHookAside = func() { os.Exit(3) }
		o := tinyOptions(data, out)
		o.Steps, o.Resume = 2, true
		_, err := Run(context.Background(), o, cpu.New(1), io.Discard)
		fmt.Fprintln(os.Stderr, "run did not die:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestKillBetweenRenames: a run killed after the old checkpoint was renamed
// aside and before the new one came in leaves no checkpoint-2 under its name;
// the next run of the folder puts it back, removes the partial folders, and
// resumes.
func TestKillBetweenRenames(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 2
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	// Resuming a finished run rewrites checkpoint-2: die in the middle.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DLLM_TEST_CRASH_ASIDE="+o.Out+","+data)
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("crashing run: %v\n%s", err, b)
	}
	ck := filepath.Join(o.Out, "checkpoint-2")
	if _, err := os.Stat(ck); !os.IsNotExist(err) {
		t.Fatalf("checkpoint-2 present after the kill (%v): the hook did not run between the renames", err)
	}
	if _, err := os.Stat(asideName(ck)); err != nil {
		t.Fatalf("no aside copy after the kill: %v", err)
	}
	tmps, _ := filepath.Glob(filepath.Join(o.Out, ".checkpoint-2.tmp-*"))
	if len(tmps) != 1 {
		t.Fatalf("want the killed run's temporary checkpoint left, got %v", tmps)
	}
	o.Resume, o.Steps, o.Set = true, 3, []string{"steps"}
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatalf("resume after the kill: %v", err)
	}
	entries, _ := os.ReadDir(o.Out)
	for _, e := range entries {
		if isTemp(e.Name()) {
			t.Errorf("%s left in the output folder", e.Name())
		}
	}
	if n := len(trainLosses(t, o.Out)); n != 3 {
		t.Fatalf("%d train records, want 3", n)
	}
	if _, err := os.Stat(filepath.Join(o.Out, "checkpoint-3", "trainer_state.json")); err != nil {
		t.Fatal(err)
	}
}

// TestOneRunPerFolder: while a run holds the folder, another is refused with
// its PID, whether it resumes, forces or starts fresh.
func TestOneRunPerFolder(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	lock, err := lockOut(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	for _, mode := range []string{"fresh", "force", "resume"} {
		p := o
		p.Force, p.Resume = mode == "force", mode == "resume"
		_, err := Run(context.Background(), p, cpu.New(2), io.Discard)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
			t.Errorf("%s: want a refusal naming pid %d, got %v", mode, os.Getpid(), err)
		}
	}
	lock.Close()
	o.Force = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatalf("after the lock is released: %v", err)
	}
}

// TestInputsInsideOut: a source or data inside the output folder is refused,
// with --force too, and nothing is deleted.
func TestInputsInsideOut(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(writeCorpus(t))
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(out, "metrics.jsonl") // a name --force would remove
	if err := os.WriteFile(data, src, 0o644); err != nil {
		t.Fatal(err)
	}
	o := tinyOptions(data, out)
	o.Force = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err == nil || !strings.Contains(err.Error(), "inside the output folder") {
		t.Fatalf("data inside --out: got %v", err)
	}
	if _, err := os.Stat(data); err != nil {
		t.Fatalf("the data was deleted: %v", err)
	}
	o = tinyOptions(writeCorpus(t), tinyLlama)
	o.Force = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err == nil || !strings.Contains(err.Error(), "inside") {
		t.Fatalf("--out the source itself: got %v", err)
	}
}

// TestForeignFolder: a non-empty folder that holds no run is refused unless
// --force, and --force keeps the files that are not the run's.
func TestForeignFolder(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	os.MkdirAll(out, 0o755)
	notes := filepath.Join(out, "notes.txt")
	if err := os.WriteFile(notes, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := tinyOptions(writeCorpus(t), out)
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err == nil || !strings.Contains(err.Error(), "notes.txt") {
		t.Fatalf("want a refusal naming notes.txt, got %v", err)
	}
	o.Force = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(notes); err != nil || string(b) != "mine" {
		t.Fatalf("notes.txt: %q %v", b, err)
	}
	// Folders and files of a run are world-readable, as HF saves are.
	for _, p := range []string{"final", "checkpoint-1", "final/config.json", "checkpoint-1/model.safetensors", "metrics.jsonl"} {
		st, err := os.Stat(filepath.Join(out, p))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if st.IsDir() {
			want = 0o755
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
}

// TestMetricsFullDisk: a failed metrics.jsonl write ends the run with an
// error naming the file.
func TestMetricsFullDisk(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(o.Out, "metrics.jsonl")
	os.Remove(m)
	if err := os.Symlink("/dev/full", m); err != nil {
		t.Fatal(err)
	}
	o.Resume, o.Steps, o.Set = true, 2, []string{"steps"}
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "metrics.jsonl") || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("want a metrics.jsonl write error, got %v", err)
	}
}
