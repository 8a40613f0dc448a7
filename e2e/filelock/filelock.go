// Package filelock serialises the e2e harness's cache builders (control
// plane binaries, VM images) across concurrent test processes.
package filelock

import (
	"fmt"
	"os"
	"syscall"
)

// Lock takes an exclusive flock on path (created if missing), blocking until
// it is free, and returns the function that releases it.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
