//go:build !linux

package cuda

import "errors"

type libcuda struct{ path string }

func openLibcuda(string) (*libcuda, error) {
	return nil, errors.New("the CUDA backend runs on Linux only")
}

func openDevice(*libcuda, int, string) (driver, error) {
	return nil, errors.New("the CUDA backend runs on Linux only")
}
