package router

import (
	"errors"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

type fakeLocal struct {
	inFlight map[string]int
	ejected  map[string]time.Duration
}

func (f fakeLocal) InFlight(id string) int             { return f.inFlight[id] }
func (f fakeLocal) EjectedFor(id string) time.Duration { return f.ejected[id] }
func mk(id, node, model string) registry.Instance {
	return registry.Instance{ID: id, NodeID: node, Model: model, Health: registry.HealthPassing}
}

func placeIDs(t *testing.T, req PlaceRequest, list ...registry.Instance) ([]string, error) {
	t.Helper()
	registry.Sort(list)
	got, err := LeastInFlight{}.Place(req, registry.Snapshot{Instances: list})
	var ids []string
	for _, in := range got {
		ids = append(ids, in.ID)
	}
	return ids, err
}

func TestLeastInFlight(t *testing.T) {
	draining := mk("d", "n0", "m")
	draining.Draining = true
	critical := mk("c", "n0", "m")
	critical.Health = registry.HealthCritical
	embedOnly := mk("e", "n0", "m")
	embedOnly.APIs = []string{"/v1/embeddings"}
	local := fakeLocal{
		inFlight: map[string]int{"x": 2, "y": 0, "z": 0, "w": 1},
		ejected:  map[string]time.Duration{"v": time.Second},
	}
	req := PlaceRequest{Model: "m", Path: "/v1/chat/completions", Local: local}
	got, err := placeIDs(t, req,
		mk("x", "n1", "m"), mk("z", "n2", "m"), mk("y", "n3", "m"), mk("w", "n1", "m"), mk("v", "n0", "m"),
		mk("other", "n0", "other-model"), draining, critical, embedOnly)
	if err != nil {
		t.Fatal(err)
	}
	// Fewest in flight first; equal loads in (node, id) order; ejected,
	// draining, critical, other models and other paths left out.
	want := []string{"z", "y", "w", "x"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}

	if _, err := placeIDs(t, PlaceRequest{Model: "nope", Path: "/v1/chat/completions", Local: local}, mk("x", "n1", "m")); !errors.Is(err, ErrModelNotAvailable) {
		t.Errorf("unknown model: %v", err)
	}
	if _, err := placeIDs(t, PlaceRequest{Model: "m", Path: "/v1/embeddings", Local: local}, mk("x", "n1", "m")); !errors.Is(err, ErrModelNotAvailable) {
		t.Errorf("path not served: %v", err)
	}
	var nc *NoCapacityError
	if _, err := placeIDs(t, req, mk("v", "n0", "m"), draining); !errors.As(err, &nc) || nc.RetryAfter != time.Second {
		t.Errorf("only ejected/draining: %v", err)
	}
}

func TestLocalStateEjection(t *testing.T) {
	now := time.Unix(1000, 0)
	var ejections []time.Duration
	s := newLocalState(outlierConfig{consecutive: 3, base: time.Second, cap: 4 * time.Second, maxShare: 0.5}, func(_ string, d time.Duration) { ejections = append(ejections, d) })
	s.now = func() time.Time { return now }

	s.gatewayFailure("a")
	s.gatewayFailure("a")
	s.success("a") // a success (2xx or 4xx) breaks the run
	s.gatewayFailure("a")
	s.gatewayFailure("a")
	if s.EjectedFor("a") != 0 {
		t.Fatal("ejected without three consecutive faults")
	}
	s.gatewayFailure("a")
	if d := s.EjectedFor("a"); d != time.Second {
		t.Fatalf("ejected for %v, want 1s", d)
	}
	s.gatewayFailure("a") // a late report from a request started before: no stacking
	if d := s.EjectedFor("a"); d != time.Second {
		t.Fatalf("late fault changed the ejection to %v", d)
	}
	now = now.Add(time.Second)
	s.gatewayFailure("a") // on probation: one fault re-ejects, for twice as long
	if d := s.EjectedFor("a"); d != 2*time.Second {
		t.Fatalf("probation fault: ejected for %v, want 2s", d)
	}
	now = now.Add(2 * time.Second)
	s.gatewayFailure("a")
	now = now.Add(4 * time.Second)
	s.gatewayFailure("a")
	if d := s.EjectedFor("a"); d != 4*time.Second {
		t.Fatalf("back-off must cap at 4s, got %v", d)
	}
	now = now.Add(4 * time.Second)
	s.success("a") // proven healthy: back to the base back-off, no probation
	s.gatewayFailure("a")
	if s.EjectedFor("a") != 0 {
		t.Fatal("a single fault after recovery ejected")
	}
	if len(ejections) != 4 {
		t.Fatalf("ejections %v", ejections)
	}

	release := s.acquire("b")
	if s.InFlight("b") != 1 {
		t.Fatal("in-flight not counted")
	}
	s.sync(&registry.Snapshot{})
	if s.InFlight("b") != 1 {
		t.Fatal("pruned an instance with requests in flight")
	}
	release()
	s.sync(&registry.Snapshot{})
	if _, ok := s.m["a"]; ok {
		t.Fatal("departed instance not pruned")
	}
}
