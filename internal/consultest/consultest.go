// Package consultest watches a Consul health check the way a router would
// (blocking queries on the catalog's health view) and records every state
// it sees, so tests can assert both "became critical within X" and "never
// left passing".
package consultest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// Observation is one state of the watched check.
type Observation struct {
	At     time.Time
	Status string // passing, warning, critical, or "absent"
}

// Watcher follows one check of one service.
type Watcher struct {
	mu      sync.Mutex
	obs     []Observation
	changed chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
}

// Watch starts following checkID of service until the test ends.
func Watch(t testing.TB, c *consul.Client, service, checkID string) *Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{changed: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	first := make(chan struct{})
	go func() {
		defer close(w.done)
		var idx uint64
		once := sync.Once{}
		for ctx.Err() == nil {
			q := (&consul.QueryOptions{WaitIndex: idx, WaitTime: 5 * time.Second}).WithContext(ctx)
			checks, meta, err := c.Health().Checks(service, q)
			if err != nil {
				if ctx.Err() == nil {
					time.Sleep(20 * time.Millisecond)
				}
				continue
			}
			idx = meta.LastIndex
			status := "absent"
			for _, ch := range checks {
				if ch.CheckID == checkID {
					status = ch.Status
				}
			}
			w.record(status)
			once.Do(func() { close(first) })
		}
	}()
	t.Cleanup(w.Stop)
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatalf("consultest: no first answer for %s", service)
	}
	return w
}

func (w *Watcher) record(status string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.obs); n > 0 && w.obs[n-1].Status == status {
		return
	}
	w.obs = append(w.obs, Observation{At: time.Now(), Status: status})
	close(w.changed)
	w.changed = make(chan struct{})
}

// Stop ends the watch.
func (w *Watcher) Stop() { w.cancel(); <-w.done }

// History is every distinct state seen, in order.
func (w *Watcher) History() []Observation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Observation(nil), w.obs...)
}

// Current is the last state seen.
func (w *Watcher) Current() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.obs) == 0 {
		return ""
	}
	return w.obs[len(w.obs)-1].Status
}

// WaitFor waits until the check is in status and returns when it was first
// seen so; it fails the test after limit.
func (w *Watcher) WaitFor(t testing.TB, status string, limit time.Duration) time.Time {
	t.Helper()
	return w.wait(t, limit, status, func(s string) bool { return s == status })
}

// WaitNot waits until the check leaves status (to any other state,
// including absent) and returns when that was first seen.
func (w *Watcher) WaitNot(t testing.TB, status string, limit time.Duration) time.Time {
	t.Helper()
	return w.wait(t, limit, "not "+status, func(s string) bool { return s != status })
}

func (w *Watcher) wait(t testing.TB, limit time.Duration, what string, ok func(string) bool) time.Time {
	t.Helper()
	deadline := time.After(limit)
	for {
		w.mu.Lock()
		ch := w.changed
		var at time.Time
		if n := len(w.obs); n > 0 && ok(w.obs[n-1].Status) {
			at = w.obs[n-1].At
		}
		w.mu.Unlock()
		if !at.IsZero() {
			return at
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("check not %s after %v; history %s", what, limit, w)
			return time.Time{}
		}
	}
}

// Since returns the states seen after t0, starting with the one current
// at t0.
func (w *Watcher) Since(t0 time.Time) []string {
	h := w.History()
	var out []string
	for i, o := range h {
		if o.At.After(t0) || i == len(h)-1 || h[i+1].At.After(t0) {
			out = append(out, o.Status)
		}
	}
	return out
}

func (w *Watcher) String() string {
	s := ""
	for _, o := range w.History() {
		s += fmt.Sprintf("[%s %s] ", o.At.Format("15:04:05.000"), o.Status)
	}
	return s
}

// DriverPolicy is deploy/consul/driver-policy.hcl, read from the repository
// so tests prove the shipped policy is enough.
func DriverPolicy(t testing.TB) string { return repoFile(t, "deploy/consul/driver-policy.hcl") }

// RouterPolicy is deploy/consul/router-policy.hcl.
func RouterPolicy(t testing.TB) string { return repoFile(t, "deploy/consul/router-policy.hcl") }

func repoFile(t testing.TB, rel string) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return string(b)
}
