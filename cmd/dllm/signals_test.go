package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startConvert starts the built binary on the tiny model and returns it
// with a channel of its stderr lines.
func startConvert(t *testing.T, bin, data, out string, extra ...string) (*exec.Cmd, <-chan string, *strings.Builder) {
	t.Helper()
	args := append([]string{"convert", filepath.Join(moduleRoot(t), "testdata/tiny/llama"), "--data", data, "--out", out,
		"--steps", "1000000", "--seq-len", "32", "--batch-size", "2", "--eval-rows", "2", "--eval-mc", "1",
		"--eval-every", "0", "--save-every", "0", "--threads", "1", "--quiet"}, extra...)
	cmd := exec.Command(bin, args...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	all := &strings.Builder{}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines, all
}

// waitFor reads lines until one contains s.
func waitFor(t *testing.T, lines <-chan string, all *strings.Builder, s string) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the run ended before printing %q:\n%s", s, all)
			}
			all.WriteString(l + "\n")
			if strings.Contains(l, s) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q within a minute:\n%s", s, all)
		}
	}
}

// finish sends the signals and waits for the exit; it returns the exit code
// and the seconds from the first signal to the exit.
func finish(t *testing.T, cmd *exec.Cmd, lines <-chan string, all *strings.Builder, sigs ...syscall.Signal) (int, float64) {
	t.Helper()
	t0 := time.Now()
	for _, s := range sigs {
		cmd.Process.Signal(s)
	}
	for l := range lines {
		all.WriteString(l + "\n")
	}
	err := cmd.Wait()
	secs := time.Since(t0).Seconds()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("want a non-zero exit, got %v:\n%s", err, all)
	}
	return ee.ExitCode(), secs
}

// TestSignals runs the binary and signals it: in training each of SIGINT,
// SIGTERM and SIGHUP saves a checkpoint and exits 128+signal; a second
// signal exits at once; a signal during evaluation or data loading is acted
// on within a second.
func TestSignals(t *testing.T) {
	bin := buildBinary(t)
	data := smallText(t)
	for _, c := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 130}, {syscall.SIGTERM, 143}, {syscall.SIGHUP, 129}} {
		t.Run(c.sig.String(), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "run")
			cmd, lines, all := startConvert(t, bin, data, out)
			waitFor(t, lines, all, "eval before:")
			time.Sleep(300 * time.Millisecond)
			code, _ := finish(t, cmd, lines, all, c.sig)
			if code != c.code || !strings.Contains(all.String(), "continue with") {
				t.Fatalf("exit %d, want %d with a checkpoint:\n%s", code, c.code, all)
			}
			cks, _ := filepath.Glob(filepath.Join(out, "checkpoint-*", "trainer_state.json"))
			if len(cks) != 1 {
				t.Fatalf("checkpoints %v:\n%s", cks, all)
			}
		})
	}
	t.Run("two runs at once", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "run")
		cmd, lines, all := startConvert(t, bin, data, out)
		waitFor(t, lines, all, "eval before:")
		for _, extra := range [][]string{nil, {"--force"}, {"--resume"}} {
			args := append([]string{"convert", filepath.Join(moduleRoot(t), "testdata/tiny/llama"), "--data", data, "--out", out, "--steps", "2"}, extra...)
			b, err := exec.Command(bin, args...).CombinedOutput()
			want := fmt.Sprintf("used by another dllm run (process %d)", cmd.Process.Pid)
			if err == nil || !strings.Contains(string(b), want) {
				t.Errorf("second run %v: %v\n%s", extra, err, b)
			}
		}
		if code, _ := finish(t, cmd, lines, all, syscall.SIGINT); code != 130 {
			t.Fatalf("exit %d:\n%s", code, all)
		}
	})
	t.Run("twice", func(t *testing.T) {
		cmd, lines, all := startConvert(t, bin, data, filepath.Join(t.TempDir(), "run"))
		waitFor(t, lines, all, "eval before:")
		// Two of one signal may merge into one delivery: send two kinds.
		// Sent back to back, they may arrive in either order; the exit code
		// is the second one's (143 or 130).
		code, _ := finish(t, cmd, lines, all, syscall.SIGINT, syscall.SIGTERM)
		if (code != 143 && code != 130) || !strings.Contains(all.String(), "a second signal: stopping now") {
			t.Fatalf("exit %d:\n%s", code, all)
		}
	})
	big := filepath.Join(t.TempDir(), "big.txt")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(w, "Once upon a time a little cat number %d sat in the sun and played.\n\n", i)
	}
	w.Flush()
	f.Close()
	t.Run("evaluation", func(t *testing.T) {
		// 1000 passes over 1000 rows: minutes unless the signal stops it.
		cmd, lines, all := startConvert(t, bin, big, filepath.Join(t.TempDir(), "run"), "--eval-mc", "1000", "--eval-rows", "1000", "--batch-size", "8")
		waitFor(t, lines, all, "eval before training")
		time.Sleep(500 * time.Millisecond)
		code, secs := finish(t, cmd, lines, all, syscall.SIGTERM)
		if code != 143 || secs > 2 || !strings.Contains(all.String(), "before the first step") {
			t.Fatalf("exit %d after %.2fs:\n%s", code, secs, all)
		}
		t.Logf("SIGTERM during evaluation: exit after %.2fs", secs)
	})
	t.Run("loading", func(t *testing.T) {
		cmd, lines, all := startConvert(t, bin, big, filepath.Join(t.TempDir(), "run"))
		waitFor(t, lines, all, "data: reading")
		time.Sleep(300 * time.Millisecond)
		code, secs := finish(t, cmd, lines, all, syscall.SIGINT)
		if code != 130 || secs > 2 || strings.Contains(all.String(), "eval before") {
			t.Fatalf("exit %d after %.2fs (the load must not finish):\n%s", code, secs, all)
		}
		t.Logf("SIGINT during data loading: exit after %.2fs", secs)
	})
}
