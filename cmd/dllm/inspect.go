package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/model"
)

type tensorRow struct {
	Name  string  `json:"name"`
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
	File  string  `json:"file"`
}

type inspectReport struct {
	Path           string            `json:"path"`
	Architecture   string            `json:"architecture"`
	ModelType      string            `json:"model_type"`
	Parameters     int64             `json:"parameters"`
	DTypes         map[string]int    `json:"dtypes"`
	Hidden         int               `json:"hidden_size"`
	Intermediate   int               `json:"intermediate_size"`
	Layers         int               `json:"layers"`
	Heads          int               `json:"heads"`
	KVHeads        int               `json:"kv_heads"`
	HeadDim        int               `json:"head_dim"`
	Vocab          int               `json:"vocab_size"`
	TiedEmbeddings bool              `json:"tied_embeddings"`
	TiedStoredAs   string            `json:"tied_stored_as,omitempty"`
	QKVBias        bool              `json:"qkv_bias"`
	QKNorm         bool              `json:"qk_norm"`
	RopeTheta      float64           `json:"rope_theta"`
	RopeScaling    string            `json:"rope_scaling,omitempty"`
	Tokenizer      *tokenizerReport  `json:"tokenizer,omitempty"`
	DiskBytes      int64             `json:"disk_bytes"`
	Files          []string          `json:"files"`
	Diffusion      *model.DLLMInfo   `json:"dllm,omitempty"`
	MoE            *moeReport        `json:"moe,omitempty"`
	Problems       []model.Problem   `json:"problems"`
	Consistent     bool              `json:"consistent"`
	Tensors        []tensorRow       `json:"tensors,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
}

func newInspectCmd() *cobra.Command {
	var asJSON, listTensors bool
	cmd := &cobra.Command{
		Use:   "inspect DIR",
		Short: "Describe a checkpoint and check it against its config",
		Long: `inspect reads a Hugging Face model directory (config.json, safetensors weights,
tokenizer files) and reports its architecture, sizes, dtypes, tokenizer and
mask-token plan, and whether the weights match the config. It exits non-zero
on any inconsistency.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := inspect(args[0], listTensors)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printInspect(out, rep)
			}
			if !rep.Consistent {
				return &exitError{1, fmt.Errorf("%s: %d inconsistencies between the weights and config.json (listed above)", args[0], len(rep.Problems))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().BoolVar(&listTensors, "tensors", false, "list every tensor")
	return cmd
}

func inspect(dir string, listTensors bool) (*inspectReport, error) {
	cfg, r, err := model.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	rep := &inspectReport{
		Path: dir, Architecture: cfg.ArchitectureName, ModelType: cfg.ModelType, Parameters: cfg.ParamCount(),
		DTypes: map[string]int{}, Hidden: cfg.Hidden, Intermediate: cfg.Intermediate, Layers: cfg.Layers,
		Heads: cfg.Heads, KVHeads: cfg.KVHeads, HeadDim: cfg.HeadDim, Vocab: cfg.Vocab,
		TiedEmbeddings: cfg.TieEmbeddings, QKVBias: cfg.QKVBias, QKNorm: cfg.QKNorm, RopeTheta: cfg.RopeTheta,
		DiskBytes: r.DiskBytes(), Diffusion: cfg.DLLM, Metadata: r.Metadata(), MoE: moeOf(cfg),
	}
	if cfg.RopeScaling != nil {
		rep.RopeScaling = fmt.Sprintf("%s x%g", cfg.RopeScaling.Type, cfg.RopeScaling.Factor)
	}
	for _, f := range r.Files {
		rep.Files = append(rep.Files, filepath.Base(f.Path))
	}
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		rep.DTypes[string(info.DType)]++
		if listTensors {
			rep.Tensors = append(rep.Tensors, tensorRow{n, string(info.DType), info.Shape, filepath.Base(r.FileOf(n))})
		}
	}
	rep.Problems, rep.TiedStoredAs = cfg.Check(r)
	tok, tokProblems := inspectTokenizer(dir, cfg)
	rep.Tokenizer = tok
	rep.Problems = append(rep.Problems, tokProblems...)
	if rep.Problems == nil {
		rep.Problems = []model.Problem{}
	}
	rep.Consistent = len(rep.Problems) == 0
	return rep, nil
}

func printInspect(w io.Writer, r *inspectReport) {
	p := func(k, format string, a ...any) { fmt.Fprintf(w, "%-18s %s\n", k+":", fmt.Sprintf(format, a...)) }
	arch := r.ModelType
	if r.Architecture != "" {
		arch += " (" + r.Architecture + ")"
	}
	p("architecture", "%s", arch)
	p("parameters", "%s", commas(r.Parameters))
	p("layers", "%d", r.Layers)
	p("hidden / ffn", "%d / %d", r.Hidden, r.Intermediate)
	if r.MoE != nil {
		printMoE(p, r.Layers, r.MoE)
	}
	p("heads / kv heads", "%d / %d (head_dim %d)", r.Heads, r.KVHeads, r.HeadDim)
	p("vocab", "%d", r.Vocab)
	tied := "no"
	if r.TiedEmbeddings {
		tied = "yes, stored as " + r.TiedStoredAs
	}
	p("tied embeddings", "%s", tied)
	extras := []string{}
	if r.QKVBias {
		extras = append(extras, "q/k/v bias")
	}
	if r.QKNorm {
		extras = append(extras, "q/k norm")
	}
	if r.RopeScaling != "" {
		extras = append(extras, "rope scaling "+r.RopeScaling)
	}
	if len(extras) > 0 {
		p("features", "%s", strings.Join(extras, ", "))
	}
	p("rope theta", "%g", r.RopeTheta)
	var dts []string
	for d, n := range r.DTypes {
		dts = append(dts, fmt.Sprintf("%s x%d", d, n))
	}
	sort.Strings(dts)
	p("dtypes", "%s", strings.Join(dts, ", "))
	p("on disk", "%s bytes in %s", commas(r.DiskBytes), strings.Join(r.Files, ", "))
	if t := r.Tokenizer; t != nil {
		printTokenizer(p, t)
	} else {
		p("tokenizer", "none found")
	}
	if d := r.Diffusion; d != nil {
		attn := d.Attention
		if d.BlockSize > 0 {
			attn = fmt.Sprintf("%s (block size %d)", attn, d.BlockSize)
		}
		p("diffusion", "mask id %d, shift %v, attention %s, weighting %s, %d steps, %s tokens, from %s",
			d.MaskTokenID, d.Shift, attn, d.Weighting, d.Steps, commas(d.TokensSeen), d.Source)
	}
	if len(r.Tensors) > 0 {
		fmt.Fprintln(w, "tensors:")
		for _, t := range r.Tensors {
			fmt.Fprintf(w, "  %-52s %-5s %-14s %s\n", t.Name, t.DType, fmt.Sprint(t.Shape), t.File)
		}
	}
	if len(r.Problems) == 0 {
		p("check", "ok: every tensor matches config.json")
	} else {
		p("check", "%d problems", len(r.Problems))
		for _, pr := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", pr)
		}
	}
}

// commas formats 260032 as 260,032.
func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
