package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
)

// openBackend picks the compute device: cpu, cuda, or auto (the GPU when a
// driver and a device are found, else the CPU; a machine with a driver whose
// GPU could not be used gets a one-line note on log, one without a driver
// none).
func openBackend(device string, threads int, log io.Writer) (kernels.Backend, error) {
	switch device {
	case "cpu":
		return cpu.New(threads), nil
	case "cuda", "auto":
		be, err := openCUDA()
		if err == nil {
			return be, nil
		}
		if device == "cuda" {
			return nil, fmt.Errorf("--device cuda: %v (use --device cpu)", err)
		}
		if log != nil && !strings.HasPrefix(err.Error(), "no CUDA driver found") {
			fmt.Fprintf(log, "dllm: running on the CPU: %v\n", err)
		}
		return cpu.New(threads), nil
	}
	return nil, &exitError{2, fmt.Errorf("unknown device %q: use auto, cpu or cuda", device)}
}
