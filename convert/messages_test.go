package convert

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// poison overwrites every tensor byte of a safetensors file with 0xff (NaN
// in f32), keeping its header.
func poison(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := 8 + int(binary.LittleEndian.Uint64(b))
	for i := start; i < len(b); i++ {
		b[i] = 0xff
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNonFiniteMessages: NaN weights in a checkpoint or a source are named
// as such, and a run that diverges before any checkpoint says none was kept.
func TestNonFiniteMessages(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	poison(t, filepath.Join(o.Out, "checkpoint-1", "model.safetensors"))
	r := o
	r.Resume, r.Steps, r.Set = true, 2, []string{"steps"}
	_, err := Run(context.Background(), r, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "checkpoint-1 holds NaN or infinite weights") || strings.Contains(err.Error(), "--lr") {
		t.Errorf("poisoned checkpoint: %v", err)
	}

	src := doctored(t, nil)
	poison(t, filepath.Join(src, "model.safetensors"))
	s := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	s.Source = src
	if _, err := Run(context.Background(), s, cpu.New(2), io.Discard); err == nil || !strings.Contains(err.Error(), "hold NaN or infinite values") {
		t.Errorf("poisoned source: %v", err)
	}

	d := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	d.LR, d.Clip, d.SaveEvery = 1e30, 0, 0
	_, err = Run(context.Background(), d, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "non-finite loss") || !strings.Contains(err.Error(), "no checkpoint was written") || strings.Contains(err.Error(), "is kept") {
		t.Errorf("diverged run: %v", err)
	}
	d = tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	d.LR, d.Clip, d.SaveEvery, d.Steps = 1e30, 0, 1, 4
	_, err = Run(context.Background(), d, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "checkpoint-1, is kept") {
		t.Errorf("diverged run after a checkpoint: %v", err)
	}
}

// TestWarnings: --seq-len beyond the positions, a mask token that is EOS and
// a block larger than --seq-len are each named.
func TestWarnings(t *testing.T) {
	data := writeCorpus(t)
	for _, c := range []struct {
		set  func(o *Options)
		want string
	}{
		{func(o *Options) { o.SeqLen = 300; o.BatchSize = 1 }, "--seq-len 300 is beyond the model's max_position_embeddings 256"},
		{func(o *Options) { o.MaskToken = "2" }, "the mask token </s> (2) is also the EOS token"},
		{func(o *Options) { o.BlockSchedule = "64:1,8:1" }, "--block-schedule block 64 is larger than --seq-len 32"},
	} {
		o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
		o.Steps, o.EvalRows = 1, 1
		c.set(&o)
		var log bytes.Buffer
		if _, err := Run(context.Background(), o, cpu.New(2), &log); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "warning: "+c.want) {
			t.Errorf("no warning %q in:\n%s", c.want, log.String())
		}
	}
}

// TestResumeChangedData: resuming after the data changed is refused and
// says why.
func TestResumeChangedData(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(data, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("a new story about the cat and the dog in the park.\n\n")
	f.Close()
	o.Resume, o.Steps, o.Set = true, 2, []string{"steps"}
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "changed since the run started") {
		t.Fatalf("got %v", err)
	}
}
