package model

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// ActivationBytes is what NewActivations allocates for B rows of L tokens,
// summed from the same activation tables (+Inf when it cannot be counted).
func (c *Config) ActivationBytes(B, L int, training bool) float64 {
	p, err := ComputePlan(c, PlanOptions{SeqLen: L, BatchSize: B, Inference: !training, Threads: 1})
	if err != nil {
		return math.Inf(1)
	}
	return float64(p.ActivationBytes)
}

// KVCacheBytes is the float32 key/value cache of B rows of L tokens.
func (c *Config) KVCacheBytes(B, L int) float64 {
	return 4 * 2 * float64(c.Layers) * float64(B) * float64(L) * float64(c.KVDim())
}

// ParamBytes is the float32 weights; training adds gradients and two AdamW
// moments.
func (c *Config) ParamBytes(training bool) float64 {
	n := 4 * float64(c.ParamCount())
	if training {
		n *= 4
	}
	return n
}

// AvailableBytes is the memory new buffers may take on this machine
// (MemAvailable of /proc/meminfo), 0 when unknown.
func AvailableBytes() float64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

// CheckFits refuses a plan of need bytes (what: the buffers, fix: what to
// lower) that the machine's available memory cannot hold, rather than
// letting the allocation be killed; on CUDA the device has its own limit,
// checked by the driver at allocation.
func CheckFits(need float64, what, fix string) error {
	if math.IsNaN(need) || math.IsInf(need, 0) || need >= 1<<50 {
		return fmt.Errorf("%s cannot be allocated: %s", what, fix)
	}
	if avail := AvailableBytes(); avail > 0 && need > avail {
		return fmt.Errorf("%s need %s but %s of memory is available: %s", what, FormatBytes(need), FormatBytes(avail), fix)
	}
	return nil
}

// FormatBytes prints a size for a message: GiB or MiB to one decimal, else KiB.
func FormatBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", n/(1<<10))
}

// CheckGenerationConfig checks the token ids of dir's generation_config.json
// (when there is one) against the vocabulary.
func CheckGenerationConfig(dir string, vocab int) error {
	p := filepath.Join(dir, "generation_config.json")
	st, err := os.Stat(p)
	if err != nil {
		return nil
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	b, err := regfile.ReadFile(p)
	if err != nil {
		return err
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("%s: not valid JSON: %v", p, err)
	}
	for _, k := range []string{"bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id", "decoder_start_token_id"} {
		var ids []any
		switch v := raw[k].(type) {
		case nil:
			continue
		case []any:
			ids = v
		default:
			ids = []any{v}
		}
		for _, v := range ids {
			f, ok := v.(float64)
			if !ok || f != math.Trunc(f) || f < 0 || f >= float64(vocab) {
				return fmt.Errorf("%s: %s %v is outside the vocabulary (vocab_size %d)", p, k, v, vocab)
			}
		}
	}
	return nil
}
