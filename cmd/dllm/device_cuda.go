package main

import (
	"fmt"
	"os"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cuda"
)

// openCUDA opens the first GPU. DLLM_CUDA_MATMUL=bf16|fp32 sets the
// precision of matrix products (default bf16; fp32 to compare loss curves
// with the CPU). DLLM_LIBCUDA and DLLM_CUBLAS name the libraries when the
// loader does not find them.
func openCUDA() (kernels.Backend, error) {
	mm := os.Getenv("DLLM_CUDA_MATMUL")
	if mm != "" && mm != "bf16" && mm != "fp32" {
		return nil, fmt.Errorf("DLLM_CUDA_MATMUL=%q: use bf16 or fp32", mm)
	}
	return cuda.New(cuda.Options{Matmul: mm})
}
