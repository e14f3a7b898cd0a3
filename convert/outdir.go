package convert

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// lockName is the file a run holds locked (flock) in its output folder for
// its whole life; it holds the owner's PID.
const lockName = ".dllm.lock"

// ErrLocked is returned when another process holds the output folder.
var ErrLocked = errors.New("output folder in use")

// testHookAside, when set, runs between the two renames of replaceDir (a
// test kills the process there).
var testHookAside func()

// asideName is where replaceDir keeps the previous dst until the new one is
// in place.
func asideName(dst string) string {
	return filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".old")
}

// replaceDir puts the finished folder tmp at dst. An existing dst is renamed
// aside first and deleted only after tmp is in place, so a crash at any
// moment leaves dst or its aside copy (recoverOut puts it back).
func replaceDir(tmp, dst string) error {
	old := ""
	if _, err := os.Lstat(dst); err == nil {
		old = asideName(dst)
		if err := os.RemoveAll(old); err != nil {
			return err
		}
		if err := os.Rename(dst, old); err != nil {
			return err
		}
		if testHookAside != nil {
			testHookAside()
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		if old != "" {
			os.Rename(old, dst)
		}
		return err
	}
	syncPath(filepath.Dir(dst))
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}

// removeDir deletes a folder by renaming it to a temporary name first, so a
// crash halfway never leaves a partial folder under a real name.
func removeDir(dir string) error {
	tmp := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".tmp-delete")
	if err := os.Rename(dir, tmp); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}

// isTemp reports names of the temporary folders a run writes (checkpoints
// and final/ being written or deleted, and aside copies).
func isTemp(name string) bool {
	return (strings.HasPrefix(name, "."+checkpointPrefix) || strings.HasPrefix(name, ".final.")) &&
		(strings.Contains(name, ".tmp-") || strings.HasSuffix(name, ".old"))
}

// recoverOut finishes what a killed run left in its output folder (called
// with the folder locked): an aside copy whose replacement never arrived is
// put back, every other temporary folder (each a partial or superseded
// checkpoint) is removed. It returns what it did, for the log.
func recoverOut(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var did []string
	for _, e := range entries {
		n := e.Name()
		if !isTemp(n) {
			continue
		}
		p := filepath.Join(dir, n)
		if real, ok := strings.CutSuffix(n, ".old"); ok {
			dst := filepath.Join(dir, strings.TrimPrefix(real, "."))
			if _, err := os.Lstat(dst); os.IsNotExist(err) {
				if err := os.Rename(p, dst); err != nil {
					return did, err
				}
				did = append(did, fmt.Sprintf("restored %s from an interrupted replacement", filepath.Base(dst)))
				continue
			}
		}
		if err := os.RemoveAll(p); err != nil {
			return did, err
		}
		did = append(did, "removed "+n+" left by a killed run")
	}
	return did, nil
}

// isRunFolder reports whether dir's entries are all things a dllm run
// writes (an empty folder counts).
func foreignEntries(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var other []string
	for _, e := range entries {
		n := e.Name()
		if n == lockName || n == "cache" || strings.HasPrefix(n, checkpointPrefix) || isTemp(n) || contains(runArtifacts, n) ||
			strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp") {
			continue
		}
		other = append(other, n)
	}
	return other, nil
}

// inside reports whether path is dir or lies under it (after resolving
// symbolic links where the paths exist).
func inside(path, dir string) bool {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		if r, err := filepath.EvalSymlinks(a); err == nil {
			return r
		}
		return a
	}
	rel, err := filepath.Rel(abs(dir), abs(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// checkInputsOutside refuses a source or data path inside the output folder:
// --force would delete what the run reads (an InputError).
func checkInputsOutside(o *Options) error {
	if inside(o.Source, o.Out) {
		return badInput("the source model %s is inside the output folder %s: give --out a folder of its own", o.Source, o.Out)
	}
	if inside(o.Out, o.Source) {
		return badInput("the output folder %s is inside the source model %s: give --out a folder of its own", o.Out, o.Source)
	}
	for _, p := range append(append([]string(nil), o.Data...), o.EvalData...) {
		if inside(p, o.Out) {
			return badInput("the data %s is inside the output folder %s: give --out a folder of its own", p, o.Out)
		}
	}
	return nil
}
