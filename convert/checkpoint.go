package convert

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/dllm-dev/dllm/safetensors"

	"github.com/dllm-dev/dllm/internal/regfile"
)

const checkpointPrefix = "checkpoint-"

// runArtifacts are the names a run writes in its output directory; --force
// removes them and nothing else.
var runArtifacts = []string{"final", "metrics.jsonl", "run_config.json", "summary.json", "loss.png"}

// previousRun lists what an earlier run left in dir (nothing when dir does
// not exist). It changes nothing.
func previousRun(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ours []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, checkpointPrefix) || isTemp(n) || contains(runArtifacts, n) {
			ours = append(ours, n)
		}
	}
	return ours, nil
}

// checkOut refuses an output directory holding an earlier run unless force.
func checkOut(dir string, force bool) error {
	ours, err := previousRun(dir)
	if err != nil {
		return err
	}
	if len(ours) > 0 && !force {
		return badInput("%s already holds a run (%s): continue it with --resume, or start over with --force", dir, strings.Join(ours, ", "))
	}
	other, err := foreignEntries(dir)
	if err != nil {
		return err
	}
	if len(other) > 0 && !force {
		if len(other) > 3 {
			other = append(other[:3], "...")
		}
		return badInput("%s is not empty and holds no dllm run (%s): choose another --out, or pass --force to use it (only a run's own files are ever removed)", dir, strings.Join(other, ", "))
	}
	return nil
}

// prepareOut makes the output directory, removing an earlier run's
// artifacts (checked by checkOut first; the tokenized-data cache is kept).
func prepareOut(dir string) error {
	ours, err := previousRun(dir)
	if err != nil {
		return err
	}
	for _, n := range ours {
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	return os.MkdirAll(dir, 0o755)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkpoints lists finished checkpoints by step, oldest first.
func checkpoints(dir string) ([]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var steps []int
	for _, e := range entries {
		if n, ok := strings.CutPrefix(e.Name(), checkpointPrefix); ok && e.IsDir() {
			if s, err := strconv.Atoi(n); err == nil {
				steps = append(steps, s)
			}
		}
	}
	sort.Ints(steps)
	return steps, nil
}

func checkpointDir(out string, step int) string {
	return filepath.Join(out, fmt.Sprintf("%s%d", checkpointPrefix, step))
}

func latestCheckpoint(out string) (string, error) {
	steps, err := checkpoints(out)
	if err != nil {
		return "", badInput("--resume: cannot read %s: %v", out, err)
	}
	if len(steps) == 0 {
		return "", badInput("--resume: no checkpoint-STEP folder in %s to continue from", out)
	}
	return checkpointDir(out, steps[len(steps)-1]), nil
}

func readState(dir string) (*trainerState, error) {
	b, err := regfile.ReadFile(filepath.Join(dir, "trainer_state.json"))
	if err != nil {
		return nil, badInput("resume: %v", err)
	}
	// Settings added since the checkpoint was written keep their defaults.
	s := trainerState{Options: Defaults()}
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, badInput("resume: %s/trainer_state.json is not valid: %v", dir, err)
	}
	return &s, nil
}

// saveCheckpoint writes weights, optimizer moments, config and trainer
// state into a temporary folder, syncs it and renames it into place, then
// keeps only the newest --keep checkpoints.
func (r *run) saveCheckpoint() (string, error) {
	out, st := r.opt.Out, &r.state
	final := checkpointDir(out, st.Step)
	tmp, err := os.MkdirTemp(out, "."+filepath.Base(final)+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	m := r.m
	if r.lora() {
		// Only what trains: the adapter, as a PEFT folder.
		if err := r.ad.WritePEFT(tmp, r.opt.Source, m); err != nil {
			return "", fmt.Errorf("checkpoint adapter: %w", err)
		}
	} else if _, err := safetensors.Write(tmp, m.ExportSpecs(), m.ParamFetch(), safetensors.WriteOptions{DType: safetensors.F32}); err != nil {
		return "", fmt.Errorf("checkpoint weights: %w", err)
	}
	if err := r.adam.Save(tmp); err != nil {
		return "", err
	}
	cfg, _ := json.MarshalIndent(m.Cfg.RawJSON(), "", "  ")
	if err := writeFileAtomic(filepath.Join(tmp, "config.json"), append(cfg, '\n')); err != nil {
		return "", err
	}
	st.RNG, err = r.pcg.MarshalBinary()
	if err != nil {
		return "", err
	}
	sb, _ := json.MarshalIndent(st, "", "  ")
	if err := writeFileAtomic(filepath.Join(tmp, "trainer_state.json"), append(sb, '\n')); err != nil {
		return "", err
	}
	if err := syncPath(tmp); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := replaceDir(tmp, final); err != nil {
		return "", err
	}
	steps, err := checkpoints(out)
	if err != nil {
		return final, err
	}
	for len(steps) > r.opt.Keep {
		removeDir(checkpointDir(out, steps[0]))
		steps = steps[1:]
	}
	return final, nil
}

func writeFileAtomic(path string, data []byte) error {
	return safetensors.WriteFileAtomic(path, data, true)
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_ = f.Sync()
	return nil
}
