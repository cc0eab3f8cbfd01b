package registry

import (
	"context"
	"sync"
)

// Static is a Source over a list held in memory: for tests, and for the home
// profile's embedded registry. Set replaces the list and notifies watchers.
type Static struct {
	mu       sync.Mutex
	snap     Snapshot
	watchers map[chan struct{}]struct{}
}

// NewStatic returns a Static source serving list.
func NewStatic(list ...Instance) *Static {
	s := &Static{watchers: map[chan struct{}]struct{}{}}
	s.Set(list...)
	return s
}

// Set replaces the instance list; watchers get the new snapshot.
func (s *Static) Set(list ...Instance) {
	cp := make([]Instance, len(list))
	copy(cp, list)
	Sort(cp)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap = Snapshot{Instances: cp, Index: s.snap.Index + 1}
	for ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default: // a notification is already pending; it will read the latest list
		}
	}
}

func (s *Static) current() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Watch implements Source: fn gets the list now and after every Set.
func (s *Static) Watch(ctx context.Context, fn func(Snapshot)) error {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, ch)
		s.mu.Unlock()
	}()
	fn(s.current())
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
			fn(s.current())
		}
	}
}
