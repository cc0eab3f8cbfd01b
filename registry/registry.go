// Package registry is where engine instances live: the instance schema the
// driver writes and the router reads (instance.go), immutable snapshots, the
// Registrar and Source interfaces, and a static Source. Consul
// (registry/consul) and the home profile's in-memory registry
// (registry/memory) implement them; nothing else writes registrations.
package registry

import (
	"context"
)

// Registrar announces engine instances and keeps their health current.
type Registrar interface {
	// Register creates or replaces the registration with inst.ID. It is
	// idempotent: re-registering the same instance must not flap its health.
	Register(ctx context.Context, inst Instance) error
	// SetHealth feeds the instance's health check (a TTL check in Consul).
	SetHealth(ctx context.Context, id string, h Health, note string) error
	// Deregister removes the instance; unknown ids are not an error.
	Deregister(ctx context.Context, id string) error
}

// Snapshot is an immutable view of every known instance, with health.
type Snapshot struct {
	Instances []Instance
	// Index is the registry's change index the snapshot was built from.
	Index uint64
}

// Source delivers snapshots to a reader (the router's discovery). Watch
// calls fn with each new snapshot until ctx ends.
type Source interface {
	Watch(ctx context.Context, fn func(Snapshot)) error
}
