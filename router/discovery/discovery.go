// Package discovery turns a registry.Source into the router's current view
// of engine instances: an immutable snapshot swapped atomically, plus the age
// of the last contact with the registry, so readers never block on Consul and
// keep serving from the last good view while it is away.
package discovery

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/llorch/llorch/registry"
)

// View holds the latest snapshot a Source delivered. It is safe for
// concurrent use; Current never blocks.
type View struct {
	snap        atomic.Pointer[registry.Snapshot]
	lastSuccess atomic.Int64 // unix nanoseconds of the last delivery; 0 = never
	updates     atomic.Uint64
	now         func() time.Time
}

// NewView returns an empty view (no instances, never synced).
func NewView() *View {
	v := &View{now: time.Now}
	v.snap.Store(&registry.Snapshot{})
	return v
}

// Current returns the latest snapshot. Callers must not modify it: it is
// shared by every request.
func (v *View) Current() *registry.Snapshot { return v.snap.Load() }

// Synced reports whether the source has delivered at least once.
func (v *View) Synced() bool { return v.lastSuccess.Load() != 0 }

// Updates counts deliveries (tests and metrics use it).
func (v *View) Updates() uint64 { return v.updates.Load() }

// LastSuccess is when the source last delivered; zero if never.
func (v *View) LastSuccess() time.Time {
	n := v.lastSuccess.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Age is how long ago the source last delivered (its last successful contact
// with the registry). Before the first delivery it is -1.
func (v *View) Age() time.Duration {
	n := v.lastSuccess.Load()
	if n == 0 {
		return -1
	}
	return v.now().Sub(time.Unix(0, n))
}

// Store publishes a snapshot: Publish(Normalize(s)).
func (v *View) Store(s registry.Snapshot) { v.Publish(Normalize(s)) }

// Normalize copies and sorts the instance list, so the view owns an
// immutable, deterministically ordered slice whatever the source does with
// its own. A reader that prepares per-snapshot state (the placement index)
// does it on the normalized snapshot before Publish makes it current.
func Normalize(s registry.Snapshot) *registry.Snapshot {
	list := make([]registry.Instance, len(s.Instances))
	copy(list, s.Instances)
	registry.Sort(list)
	return &registry.Snapshot{Instances: list, Index: s.Index}
}

// Publish makes a normalized snapshot current (do not modify it after).
func (v *View) Publish(p *registry.Snapshot) {
	v.snap.Store(p)
	v.Touch()
	v.updates.Add(1)
}

// Touch records a contact with the registry that changed nothing (a
// blocking query that returned the same index): the age resets, the
// snapshot stays.
func (v *View) Touch() { v.lastSuccess.Store(v.now().UnixNano()) }

// Run feeds the view from src until ctx ends. It returns src.Watch's error
// (ctx.Err() on a normal stop).
func (v *View) Run(ctx context.Context, src registry.Source) error {
	return src.Watch(ctx, v.Store)
}
