package memory

import (
	"context"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

func in(id string) registry.Instance {
	return registry.Instance{ID: id, Address: "127.0.0.1", Port: 1, Model: "m", Engine: "llamacpp", NodeID: "home"}
}

func TestRegistryFeedsWatchers(t *testing.T) {
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snaps := make(chan registry.Snapshot, 16)
	go r.Watch(ctx, func(s registry.Snapshot) { snaps <- s })
	next := func() registry.Snapshot {
		select {
		case s := <-snaps:
			return s
		case <-time.After(2 * time.Second):
			t.Fatal("no snapshot")
		}
		return registry.Snapshot{}
	}
	if s := next(); len(s.Instances) != 0 {
		t.Fatalf("initial: %+v", s)
	}
	bg := context.Background()
	if err := r.Register(bg, in("b")); err != nil {
		t.Fatal(err)
	}
	r.Register(bg, in("a"))
	s := next()
	for len(s.Instances) < 2 {
		s = next()
	}
	if s.Instances[0].ID != "a" || s.Instances[0].Health != registry.HealthPassing {
		t.Fatalf("sorted/passing: %+v", s.Instances)
	}
	r.SetHealth(bg, "a", registry.HealthCritical, "hung")
	if s := next(); s.Instances[0].Health != registry.HealthCritical {
		t.Fatalf("health: %+v", s.Instances)
	}
	// Same registration again is not a change.
	idx := r.Snapshot().Index
	b := in("b")
	b.Health = registry.HealthPassing
	r.Register(bg, b)
	if r.Snapshot().Index != idx {
		t.Error("re-registering an unchanged instance bumped the index")
	}
	r.Deregister(bg, "a")
	r.Deregister(bg, "zz")
	if s := next(); len(s.Instances) != 1 || s.Instances[0].ID != "b" {
		t.Fatalf("deregister: %+v", s.Instances)
	}
	if err := r.SetHealth(bg, "zz", registry.HealthPassing, ""); err == nil {
		t.Error("SetHealth on unknown id: no error")
	}
	if err := r.Register(bg, registry.Instance{ID: "x"}); err == nil {
		t.Error("invalid instance registered")
	}
}
