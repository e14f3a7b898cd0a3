package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// logits is for checks against other implementations (scripts/gpu-check
// compares it with transformers): one forward of one row of ids, every
// position's logits written as little-endian float32, L x vocab.
func newLogitsCmd() *cobra.Command {
	var (
		modelDir, ids, out, device, mask string
		threads                          int
	)
	cmd := &cobra.Command{
		Use:    "logits --model DIR --ids 1,2,3 --out FILE",
		Short:  "Write the logits of one forward of the given ids (float32, L x vocab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if modelDir == "" || ids == "" || out == "" {
				return &exitError{2, fmt.Errorf("logits needs --model DIR, --ids and --out FILE")}
			}
			var vis kernels.Visibility
			switch mask {
			case "bidirectional":
				vis.Mode = kernels.Bidirectional
			case "causal":
				vis.Mode = kernels.Causal
			default:
				return &exitError{2, fmt.Errorf("--mask %q: use bidirectional or causal", mask)}
			}
			var toks []int32
			for _, f := range strings.Split(ids, ",") {
				v, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil {
					return &exitError{2, fmt.Errorf("--ids: %q is not an integer", f)}
				}
				toks = append(toks, int32(v))
			}
			be, err := openBackend(device, threads, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer be.Close()
			m, err := model.Load(modelDir, be)
			if err != nil {
				return err
			}
			V := m.Cfg.Vocab
			for _, t := range toks {
				if t < 0 || int(t) >= V {
					return &exitError{2, fmt.Errorf("--ids: %d is outside the vocabulary of %d", t, V)}
				}
			}
			L := len(toks)
			a := m.NewActivations(1, L, false)
			defer a.Free(be)
			copy(a.IDs, toks)
			a.Upload(be)
			m.Forward(a, vis)
			res := make([]float32, L*V)
			be.Download(res, a.Logits.Slice(0, L*V))
			if err := be.Err(); err != nil {
				return err
			}
			b := make([]byte, 4*len(res))
			for i, v := range res {
				binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d x %d logits (%s) on %s\n", out, L, V, mask, be.Name())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory (Hugging Face layout)")
	f.StringVar(&ids, "ids", "", "comma-separated token ids of one row")
	f.StringVar(&out, "out", "", "file for the logits")
	f.StringVar(&device, "device", "auto", "auto, cpu or cuda")
	f.StringVar(&mask, "mask", "bidirectional", "bidirectional or causal")
	f.IntVar(&threads, "threads", 0, "CPU threads (0: all)")
	return cmd
}
