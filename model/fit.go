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
	"github.com/dllm-dev/dllm/kernels"
)

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

// memInfo is what a GPU backend tells of its memory (cuMemGetInfo).
type memInfo interface {
	MemInfo() (free, total uint64, err error)
}

// pooled is a GPU backend whose pool keeps freed blocks (cuda.Backend):
// it gives them back to the device when an allocation would fail.
type pooled interface {
	PoolCached() uint64
}

// Available is the memory a run on be may take: the device's free memory
// on a GPU, with the blocks its pool keeps for reuse, MemAvailable on the
// CPU; 0 and "" when unknown.
func Available(be kernels.Backend) (float64, string) {
	if mi, ok := be.(memInfo); ok {
		if free, _, err := mi.MemInfo(); err == nil {
			if p, ok := be.(pooled); ok && p.PoolCached() > 0 {
				return float64(free + p.PoolCached()), "free on the GPU, with its pool's cached blocks"
			}
			return float64(free), "free on the GPU"
		}
		return 0, ""
	}
	if n := AvailableBytes(); n > 0 {
		return n, "MemAvailable"
	}
	return 0, ""
}

// PlanDevice is the plan's device for be ("cpu" or "cuda") and, on a GPU,
// its matmul precision (PlanOptions.Device and Matmul).
func PlanDevice(be kernels.Backend) (device, matmul string) {
	if strings.HasPrefix(be.Name(), "cpu") {
		return "cpu", ""
	}
	if p, ok := be.(interface{ MatmulPrecision() string }); ok {
		return "cuda", p.MatmulPrecision()
	}
	return "cuda", ""
}

// FormatBytes prints a size for a message: TiB, GiB or MiB to one decimal,
// else KiB.
func FormatBytes(n float64) string {
	switch {
	case n >= 1<<40:
		return fmt.Sprintf("%.1f TiB", n/(1<<40))
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
