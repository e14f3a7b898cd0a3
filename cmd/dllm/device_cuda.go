package main

import (
	"errors"

	"github.com/dllm-dev/dllm/kernels"
)

// openCUDA is replaced when the CUDA backend lands.
func openCUDA() (kernels.Backend, error) {
	return nil, errors.New("no CUDA backend in this build")
}
