package main

import "github.com/dllm-dev/dllm/model"

type tokenizerReport struct{}

// inspectTokenizer is filled in when the tokenizer package lands.
func inspectTokenizer(dir string, cfg *model.Config) (*tokenizerReport, []model.Problem) {
	return nil, nil
}

func printTokenizer(p func(k, format string, a ...any), t *tokenizerReport) {}
