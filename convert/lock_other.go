//go:build !unix

package convert

import (
	"os"
	"path/filepath"
)

// lockOut creates the output folder; without flock the folder is not
// locked on this system.
func lockOut(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
}
