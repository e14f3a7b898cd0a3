package main

import "github.com/spf13/cobra"

func stub(use, short, what string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		RunE:  func(*cobra.Command, []string) error { return notLanded(what) },
	}
}

func newConvertCmd() *cobra.Command {
	return stub("convert SRC", "Convert an AR checkpoint into a masked-diffusion model", "dllm convert (issue: convert)")
}

func newGenerateCmd() *cobra.Command {
	return stub("generate DIR", "Sample text from a model", "dllm generate (issue: engine / generate)")
}

func newEvalCmd() *cobra.Command {
	return stub("eval DIR", "Measure a model on text", "dllm eval (issue: engine / eval)")
}

func newBenchCmd() *cobra.Command {
	return stub("bench", "Time kernels and training steps", "dllm bench (issue: engine)")
}

func newTokenizeCmd() *cobra.Command {
	return stub("tokenize DIR", "Encode text to ids or decode ids to text", "dllm tokenize (issue: tokenizer)")
}
