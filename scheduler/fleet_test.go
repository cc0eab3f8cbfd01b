// Placement over whole fleets: random-fleet properties, large fleets and
// their sampling, concurrent decisions.

package scheduler

import (
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"

	"github.com/llorch/llorch/registry"
)

// Properties over seeded random fleets: deterministic; never picks a
// filtered instance; ranks every eligible one (up to MaxRanked).
func TestPropertiesRandomFleets(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	s := def(t, nil)
	for trial := 0; trial < 300; trial++ {
		n := 1 + rng.Intn(30)
		var list []registry.Instance
		l := loads{}
		for i := 0; i < n; i++ {
			in := inst(fmt.Sprintf("i%02d", i), fmt.Sprintf("n%d", rng.Intn(5)), fmt.Sprintf("p%d", rng.Intn(3)))
			if rng.Intn(5) == 0 {
				in.Health = registry.HealthCritical
			}
			in.Draining = rng.Intn(10) == 0
			in.Ctx = []int{1024, 4096, 8192}[rng.Intn(3)]
			list = append(list, in)
			l[in.ID] = Load{InFlight: rng.Intn(5), Ejected: rng.Intn(8) == 0, KVKnown: true, KVUsage: rng.Float64()}
		}
		ix := index(list...)
		req := Request{Model: "m", CtxNeeded: []int{0, 2048, 6000}[rng.Intn(3)], SessionKey: fmt.Sprint(rng.Intn(4))}
		d1 := s.Decide(req, ix, l)
		d2 := s.Decide(req, ix, l)
		if ids(d1.Ranked) != ids(d2.Ranked) || d1.Saturated != d2.Saturated || (d1.Err == nil) != (d2.Err == nil) {
			t.Fatalf("not deterministic")
		}
		for _, in := range d1.Ranked {
			ld := l[in.ID]
			if in.Health != registry.HealthPassing || in.Draining || ld.Ejected || in.Ctx < req.CtxNeeded || ld.InFlight >= in.Slots {
				t.Fatalf("picked filtered instance %+v load %+v for %+v", in, ld, req)
			}
		}
		// And it ranks whenever something is eligible (an empty ranking
		// must not pass): eligible, counted here from the fleet, is what
		// the filters must leave; feasible ignores only the free slot.
		eligible, feasible := 0, 0
		for _, in := range list {
			ld := l[in.ID]
			if in.Health == registry.HealthPassing && !in.Draining && !ld.Ejected && in.Ctx >= req.CtxNeeded {
				feasible++
				if ld.InFlight < in.Slots {
					eligible++
				}
			}
		}
		seen := map[string]bool{}
		for _, in := range d1.Ranked {
			if seen[in.ID] {
				t.Fatalf("%s ranked twice", in.ID)
			}
			seen[in.ID] = true
		}
		switch {
		case eligible > 0 && (d1.Err != nil || d1.Saturated || len(d1.Ranked) != min(eligible, MaxRanked)):
			t.Fatalf("trial %d: %d eligible, ranked %d (err %v, saturated %v)", trial, eligible, len(d1.Ranked), d1.Err, d1.Saturated)
		case eligible == 0 && len(d1.Ranked) != 0:
			t.Fatalf("trial %d: nothing eligible, ranked %s", trial, ids(d1.Ranked))
		case eligible == 0 && feasible > 0 && !d1.Saturated:
			t.Fatalf("trial %d: %d feasible without a free slot, not saturated (err %v)", trial, feasible, d1.Err)
		case feasible == 0 && d1.Err == nil:
			t.Fatalf("trial %d: nothing feasible and no error", trial)
		}
	}
}

// Past SampleAbove candidates Decide looks at a subset; the properties
// still hold: sessions stay on their instance, filtered instances are never
// chosen, the prefix's holder is found among thousands.
func TestLargeFleetSubset(t *testing.T) {
	var list []registry.Instance
	l := loads{}
	for i := 0; i < 2000; i++ {
		in := inst(fmt.Sprintf("i%04d", i), fmt.Sprintf("n%03d", i/4), "p")
		if i%3 == 0 {
			in.Health = registry.HealthCritical
		}
		list = append(list, in)
		l[in.ID] = Load{InFlight: i % 4}
	}
	table := NewPrefixTable(1000)
	s := def(t, table)
	ix := index(list...)
	for k := 0; k < 100; k++ {
		req := Request{Model: "m", SessionKey: fmt.Sprintf("s%d", k)}
		d := s.Decide(req, ix, l)
		if d.Considered > SampleSize+sessionFallbacks+MaxPrefixBlocks || d.Considered < SampleSize/2 {
			t.Fatalf("considered %d", d.Considered)
		}
		home := d.Ranked[0]
		if home.Health != registry.HealthPassing || l[home.ID].InFlight >= home.Slots {
			t.Fatalf("picked filtered %+v", home)
		}
		// Other instances' load changes do not move the session.
		l2 := loads{}
		for id, ld := range l {
			l2[id] = Load{InFlight: (ld.InFlight + 1) % 3}
		}
		l2[home.ID] = Load{InFlight: 2}
		if got := s.Decide(req, ix, l2).Ranked[0].ID; got != home.ID {
			t.Fatalf("session %s moved %s → %s", req.SessionKey, home.ID, got)
		}
	}
	// A prefix sent to one instance is found again in a 2000-instance fleet.
	prompt := strings.Repeat("shared system prompt ", 40)
	req := Request{Model: "m", PrefixHashes: PrefixHashes(prompt)}
	tp, _ := ix.Instance("i1999")
	target := *tp
	table.Observe(req, target)
	if got := s.Decide(req, ix, loads{}).Ranked[0].ID; got != "i1999" {
		t.Errorf("prefix holder not chosen: %s", got)
	}
}

// A sample in which nothing passes is not the fleet's answer: the one
// instance that can take the request is found among thousands, and
// Saturated or an error comes only when the whole fleet says so.
func TestSampleFallsBackToWholeFleet(t *testing.T) {
	var list []registry.Instance
	full := loads{}
	for i := 0; i < 3000; i++ {
		in := inst(fmt.Sprintf("i%04d", i), fmt.Sprintf("n%04d", i), "p")
		list = append(list, in)
		full[in.ID] = Load{InFlight: in.Slots}
	}
	list[1234].APIs = []string{"/v1/chat/completions", "/v1/embeddings"}
	ix := index(list...)
	s := def(t, NewPrefixTable(100))
	if d := s.Decide(Request{Model: "m", SessionKey: "x"}, ix, full); !d.Saturated || d.Considered != 3000 {
		t.Fatalf("all busy: saturated %v considered %d err %v", d.Saturated, d.Considered, d.Err)
	}
	for _, free := range []string{"i0007", "i1777", "i2999"} {
		l := loads{}
		for id, ld := range full {
			l[id] = ld
		}
		l[free] = Load{}
		for k := 0; k < 20; k++ {
			d := s.Decide(Request{Model: "m", SessionKey: fmt.Sprint(k), SampleSeed: uint64(k)}, ix, l)
			if c, ok := d.Chosen(); !ok || c.ID != free || len(d.Ranked) != 1 {
				t.Fatalf("free %s: got %s saturated %v", free, ids(d.Ranked), d.Saturated)
			}
		}
	}
	d := s.Decide(Request{Model: "m", Path: "/v1/embeddings"}, ix, loads{})
	if c, ok := d.Chosen(); !ok || c.ID != "i1234" {
		t.Fatalf("the only embeddings instance: %s %v", ids(d.Ranked), d.Err)
	}
	if d := s.Decide(Request{Model: "m", Path: "/v1/audio"}, ix, loads{}); d.Err == nil || d.Err.Code != CodeModelNotAvailable {
		t.Fatalf("no instance serves the path: %+v", d.Err)
	}
}

// Requests without a session or a shared prompt spread over a large fleet
// by their sample seed; a given seed always gives the same choice.
func TestSampleSeedSpreads(t *testing.T) {
	var list []registry.Instance
	for i := 0; i < 5000; i++ {
		list = append(list, inst(fmt.Sprintf("i%04d", i), fmt.Sprintf("n%04d", i), "p"))
	}
	ix := index(list...)
	s := def(t, nil)
	chosen := map[string]bool{}
	for seed := uint64(0); seed < 100; seed++ {
		req := Request{Model: "m", SampleSeed: seed}
		a, b := s.Decide(req, ix, loads{}), s.Decide(req, ix, loads{})
		if ids(a.Ranked) != ids(b.Ranked) {
			t.Fatalf("seed %d: %s then %s", seed, ids(a.Ranked), ids(b.Ranked))
		}
		chosen[a.Ranked[0].ID] = true
	}
	if len(chosen) < 50 {
		t.Errorf("100 seeds chose only %d distinct instances", len(chosen))
	}
}

// Decide shares pooled scratch between goroutines: concurrent decisions
// (run with -race) give the same answers as serial ones.
func TestConcurrentDecide(t *testing.T) {
	var list []registry.Instance
	l := loads{}
	for i := 0; i < 600; i++ {
		in := inst(fmt.Sprintf("i%03d", i), fmt.Sprintf("n%03d", i/2), "p")
		list = append(list, in)
		l[in.ID] = Load{InFlight: i % 5}
	}
	ix := index(list...)
	s := def(t, NewPrefixTable(100))
	want := make([]string, 64)
	for k := range want {
		want[k] = ids(s.Decide(Request{Model: "m", SessionKey: fmt.Sprint(k)}, ix, l).Ranked)
	}
	errs := make(chan string, 4*len(want))
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range want {
				if got := ids(s.Decide(Request{Model: "m", SessionKey: fmt.Sprint(k)}, ix, l).Ranked); got != want[k] {
					errs <- fmt.Sprintf("session %d: %s, serially %s", k, got, want[k])
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
