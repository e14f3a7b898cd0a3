// Command dllm converts autoregressive LLaMA/Qwen checkpoints into
// masked-diffusion language models, samples from them and measures them.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/corpus"
	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// exitError carries an exit code through cobra to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "dllm",
		Short:         "Convert autoregressive LLaMA/Qwen checkpoints into masked-diffusion language models",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInspectCmd(), newConvertCmd(), newGenerateCmd(), newEvalCmd(), newBenchCmd(), newTokenizeCmd(), newTemplateCmd(), newChatCmd(), newGPUCheckCmd(), newServeCmd(), newLogitsCmd(), newPlanCmd())
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{2, fmt.Errorf("%v (see '%s --help')", err, c.CommandPath())}
	})
	return root
}

func main() {
	err := newRoot().Execute()
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "dllm: %v\n", err)
	os.Exit(exitCode(err))
}

// exitCode is an exitError's code (2: bad input), 2 for the bad input that
// packages report with their own errors (a model folder or --adapter that
// cannot be used among them, convert's refusals of its inputs and the
// data corpus refuses), else 1.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var de *model.DirError
	var ae *model.AdapterError
	var ie *convert.InputError
	var dae *corpus.DataError
	if errors.Is(err, corpus.ErrNoChatTemplate) || errors.Is(err, diffusion.ErrNotDiffusion) || errors.As(err, &de) || errors.As(err, &ae) ||
		errors.As(err, &ie) || errors.As(err, &dae) {
		return 2
	}
	return 1
}
