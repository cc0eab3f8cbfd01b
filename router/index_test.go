package router

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/registry"
)

// A delivery is indexed before it is published (requests find a finished
// index and never build one), and a delivery with Consul's index unchanged
// rebuilds nothing.
func TestIndexBuiltOffTheRequestPath(t *testing.T) {
	rt, err := New(testConfig(), registry.NewStatic(), nil, hclog.NewNullLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sp := rt.placer.(*SchedulerPlacer)
	deliver := rt.onSnapshot(new(int))
	a := inst(t, "a", "n1", testModel, "http://127.0.0.1:1")
	deliver(registry.Snapshot{Instances: []registry.Instance{a}, Index: 7})
	built := sp.cur.Load()
	if !built.of(*rt.view.Current()) {
		t.Fatal("the published snapshot has no prepared index")
	}
	if _, err := sp.Place(PlaceRequest{Model: testModel, Path: "/v1/chat/completions", Local: rt.state}, *rt.view.Current()); err != nil {
		t.Fatal(err)
	}
	if sp.cur.Load() != built {
		t.Fatal("placement built an index on the request path")
	}
	updates := rt.view.Updates()
	deliver(registry.Snapshot{Instances: []registry.Instance{a}, Index: 7}) // the 30 s no-change return
	if rt.view.Updates() != updates || sp.cur.Load() != built {
		t.Fatal("an unchanged Consul index rebuilt the snapshot or its index")
	}
	b := inst(t, "b", "n2", testModel, "http://127.0.0.1:2")
	deliver(registry.Snapshot{Instances: []registry.Instance{a, b}, Index: 8})
	if sp.cur.Load() == built || !sp.cur.Load().of(*rt.view.Current()) || !sp.prev.Load().of(built.ix.Snap) {
		t.Fatal("a changed snapshot was not prepared before publishing (or the previous index dropped)")
	}
}
