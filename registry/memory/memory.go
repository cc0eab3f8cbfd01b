// Package memory is the home profile's embedded service registry: the
// registry.Registrar the engine supervisors write to and the
// registry.Source the router reads, in one process, so the same supervise
// and router code run without Consul.
package memory

import (
	"context"
	"fmt"

	"sync"

	"github.com/llorch/llorch/registry"
)

// Registry holds the instances in memory.
type Registry struct {
	mu      sync.Mutex
	insts   map[string]registry.Instance
	index   uint64
	changed chan struct{} // closed and replaced on every change
}

// New makes an empty registry.
func New() *Registry {
	return &Registry{insts: map[string]registry.Instance{}, changed: make(chan struct{})}
}

// bump records a change; callers hold mu.
func (r *Registry) bump() {
	r.index++
	close(r.changed)
	r.changed = make(chan struct{})
}

// Register implements registry.Registrar. Re-registering the same instance
// with the same health is not a change (no flap, no wake-up).
func (r *Registry) Register(_ context.Context, inst registry.Instance) error {
	if err := inst.Validate(); err != nil {
		return fmt.Errorf("home registry: %w", err)
	}
	if inst.Health == "" {
		inst.Health = registry.HealthPassing
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.insts[inst.ID]; ok && fmt.Sprint(old) == fmt.Sprint(inst) {
		return nil
	}
	r.insts[inst.ID] = inst
	r.bump()
	return nil
}

// SetHealth implements registry.Registrar.
func (r *Registry) SetHealth(_ context.Context, id string, h registry.Health, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.insts[id]
	if !ok {
		return fmt.Errorf("home registry: instance %s is not registered", id)
	}
	if in.Health != h {
		in.Health = h
		r.insts[id] = in
		r.bump()
	}
	return nil
}

// Drain marks an instance draining: placement sends it nothing new while
// the requests it has finish (the home profile does this before stopping
// an engine). False when the id is not registered.
func (r *Registry) Drain(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.insts[id]
	if !ok {
		return false
	}
	if !in.Draining {
		in.Draining = true
		r.insts[id] = in
		r.bump()
	}
	return true
}

// Deregister implements registry.Registrar; unknown ids are fine.
func (r *Registry) Deregister(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.insts[id]; ok {
		delete(r.insts, id)
		r.bump()
	}
	return nil
}

// Snapshot is the current view, sorted by (node id, instance id).
func (r *Registry) Snapshot() registry.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

func (r *Registry) snapshotLocked() registry.Snapshot {
	list := make([]registry.Instance, 0, len(r.insts))
	for _, in := range r.insts {
		list = append(list, in)
	}
	registry.Sort(list)
	return registry.Snapshot{Instances: list, Index: r.index}
}

// Watch implements registry.Source: fn gets the current snapshot at once,
// then one after every change, until ctx ends.
func (r *Registry) Watch(ctx context.Context, fn func(registry.Snapshot)) error {
	for {
		r.mu.Lock()
		snap, changed := r.snapshotLocked(), r.changed
		r.mu.Unlock()
		fn(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
