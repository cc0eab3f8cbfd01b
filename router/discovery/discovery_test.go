package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

func TestViewStoresSortedCopies(t *testing.T) {
	v := NewView()
	if v.Synced() || v.Age() != -1 || len(v.Current().Instances) != 0 {
		t.Fatal("a new view must be empty and unsynced")
	}
	list := []registry.Instance{{ID: "b", NodeID: "n2"}, {ID: "a", NodeID: "n2"}, {ID: "z", NodeID: "n1"}}
	v.Store(registry.Snapshot{Instances: list, Index: 7})
	list[0].ID = "mutated"
	got := v.Current()
	if got.Index != 7 || got.Instances[0].ID != "z" || got.Instances[1].ID != "a" || got.Instances[2].ID != "b" {
		t.Fatalf("snapshot %+v", got)
	}
	if !v.Synced() || v.Age() < 0 || v.Age() > time.Second {
		t.Fatalf("age %v after a store", v.Age())
	}
}

func TestStaticNotifiesWatchers(t *testing.T) {
	s := registry.NewStatic(registry.Instance{ID: "a"})
	v := NewView()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx, s) }()
	waitUntil(t, time.Second, "first delivery", func() bool { return len(v.Current().Instances) == 1 })
	s.Set(registry.Instance{ID: "a"}, registry.Instance{ID: "b"})
	waitUntil(t, time.Second, "update", func() bool { return len(v.Current().Instances) == 2 })
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Watch returned %v", err)
	}
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
