package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// lockRun makes e2e runs on one machine take turns. All runs share the
// 10.99.0.0/24 route in the root namespace, and sweep() deletes every llx*
// namespace, so a second run started beside a live one would tear it down.
// The kernel drops the flock when the process dies, so a crashed run never
// leaves the lock held, and once we hold it any llx* namespace is stale.
func lockRun(t *testing.T) {
	p := filepath.Join(os.TempDir(), "llorch-e2e.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("e2e lock %s: %v", p, err)
	}
	// Poll rather than block, so the wait has a deadline and no goroutine
	// is left stuck in flock(2).
	deadline := time.Now().Add(10 * time.Minute)
	for told := false; ; {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		if !told {
			fmt.Printf("e2e: another e2e run holds %s; waiting for it (up to 10m)\n", p)
			told = true
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		f.Close()
		t.Fatalf("e2e lock %s: %v", p, err)
	}
	t.Cleanup(func() { f.Close() })
}
