package regfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRefusesNonRegular: a FIFO with no writer, a device and a directory are
// refused at once; a regular file reads.
func TestRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	reg := filepath.Join(dir, "a.txt")
	os.WriteFile(reg, []byte("hi"), 0o644)
	for path, want := range map[string]string{fifo: "named pipe", "/dev/null": "device", dir: "directory"} {
		t0 := time.Now()
		_, err := ReadFile(path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v, want an error saying %q", path, err, want)
		}
		if d := time.Since(t0); d > time.Second {
			t.Errorf("%s: took %v", path, d)
		}
	}
	if b, err := ReadFile(reg); err != nil || string(b) != "hi" {
		t.Errorf("regular file: %q %v", b, err)
	}
}
