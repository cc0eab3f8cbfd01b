package scheduler

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/llorch/llorch/registry"
)

type loads map[string]Load

func (l loads) Load(id string) Load { return l[id] }

func inst(id, node, pool string, mut ...func(*registry.Instance)) registry.Instance {
	in := registry.Instance{ID: id, NodeID: node, PoolID: pool, Model: "m", Slots: 4, Ctx: 4096,
		Health: registry.HealthPassing, GPUs: []string{"GPU-" + node}, APIs: []string{"/v1/chat/completions"}}
	for _, f := range mut {
		f(&in)
	}
	return in
}

func index(list ...registry.Instance) *Index {
	registry.Sort(list)
	return NewIndex(registry.Snapshot{Instances: list})
}

func def(t testing.TB, table *PrefixTable) *Scheduler {
	p, err := DefaultProfileConfig().Build(table)
	if err != nil {
		t.Fatal(err)
	}
	return New(p)
}

func ids(l []registry.Instance) string {
	var s []string
	for _, in := range l {
		s = append(s, in.ID)
	}
	return strings.Join(s, ",")
}

func TestFilters(t *testing.T) {
	ix := index(
		inst("a", "n1", "p1"),
		inst("b", "n2", "p1", func(i *registry.Instance) { i.Health = registry.HealthCritical }),
		inst("c", "n3", "p2", func(i *registry.Instance) { i.Draining = true }),
		inst("d", "n4", "p2", func(i *registry.Instance) { i.Ctx = 1024 }),
		inst("e", "n5", "p3", func(i *registry.Instance) { i.APIs = []string{"/v1/embeddings"} }),
		inst("f", "n6", "p3"),
	)
	s := def(t, nil)
	cases := []struct {
		name    string
		req     Request
		load    loads
		want    string // ranked ids, or error code, or "saturated"
		reasons string
	}{
		{name: "healthy, path, capacity: all feasible equal → by node", req: Request{Model: "m", Path: "/v1/chat/completions"}, want: "a,d,f"},
		{name: "context", req: Request{Model: "m", Path: "/v1/chat/completions", CtxNeeded: 2048}, want: "a,f"},
		{name: "context too large everywhere", req: Request{Model: "m", CtxNeeded: 100000}, want: CodeInvalidParams},
		{name: "path nowhere", req: Request{Model: "m", Path: "/v1/audio"}, want: CodeModelNotAvailable},
		{name: "unknown model", req: Request{Model: "x"}, want: CodeModelNotAvailable},
		{name: "ejected", req: Request{Model: "m", Path: "/v1/chat/completions"}, load: loads{"a": {Ejected: true}}, want: "d,f"},
		{name: "device mask", req: Request{Model: "m", Placement: Placement{RequireGPUs: []string{"GPU-n6"}}}, want: "f"},
		{name: "least loaded first", req: Request{Model: "m", Path: "/v1/chat/completions"}, load: loads{"a": {InFlight: 2}, "d": {InFlight: 1}}, want: "f,d,a"},
		{name: "engine busy slots count", req: Request{Model: "m", Path: "/v1/chat/completions"}, load: loads{"f": {SlotsBusy: 3, Queue: 1}}, want: "a,d"},
		{name: "saturated", req: Request{Model: "m", Path: "/v1/chat/completions"}, load: loads{"a": {InFlight: 4}, "d": {InFlight: 4}, "f": {SlotsBusy: 4}}, want: "saturated"},
		{name: "pin node", req: Request{Model: "m", Placement: Placement{PinNode: "n6"}}, want: "f"},
		{name: "pin unknown node", req: Request{Model: "m", Placement: Placement{PinNode: "n9"}}, want: CodeNodeUnavailable},
		{name: "pin unready node", req: Request{Model: "m", Placement: Placement{PinNode: "n2"}}, want: CodePoolUnready},
		{name: "pin draining pool member only", req: Request{Model: "m", Placement: Placement{PinNode: "n3"}}, want: CodePoolUnready},
		{name: "pin pool", req: Request{Model: "m", Placement: Placement{PinPool: "p2"}}, want: "d"},
		{name: "pin unknown pool", req: Request{Model: "m", Placement: Placement{PinPool: "zz"}}, want: CodeInvalidParams},
		{name: "prefer", req: Request{Model: "m", Placement: Placement{PreferPools: []string{"p3"}}}, want: "e,f"},
		{name: "prefer infeasible, no fallback", req: Request{Model: "m", Placement: Placement{PreferPools: []string{"p9"}}}, want: CodePoolUnavailable},
		{name: "prefer infeasible, fallback", req: Request{Model: "m", Placement: Placement{PreferPools: []string{"p9"}, AllowFallback: true}}, want: "a,d,e,f"},
		{name: "avoid", req: Request{Model: "m", Placement: Placement{AvoidPools: []string{"p1", "p3"}}}, want: "d"},
		{name: "avoid all, fallback", req: Request{Model: "m", Placement: Placement{AvoidPools: []string{"p1", "p2", "p3"}, AllowFallback: true}}, want: "a,d,e,f"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.load == nil {
				c.load = loads{}
			}
			d := s.Decide(c.req, ix, c.load)
			var got string
			switch {
			case d.Err != nil:
				got = d.Err.Code
			case d.Saturated:
				got = "saturated"
			default:
				got = ids(d.Ranked)
			}
			if got != c.want {
				t.Errorf("got %s, want %s (reasons %v)", got, c.want, d.Reasons)
			}
		})
	}
}

func TestErrorStatuses(t *testing.T) {
	ix := index(inst("a", "n1", "p1"))
	s := def(t, nil)
	for req, status := range map[*Request]int{
		{Model: "x"}: 404,
		{Model: "m", Placement: Placement{PinNode: "zz"}}: 503,
		{Model: "m", Placement: Placement{PinPool: "zz"}}: 400,
	} {
		if d := s.Decide(*req, ix, loads{}); d.Err == nil || d.Err.Status != status {
			t.Errorf("%+v: %+v", req, d.Err)
		}
	}
}

func TestKVHeadroomAndTieBreak(t *testing.T) {
	ix := index(inst("b", "n1", "p"), inst("a", "n1", "p"), inst("c", "n0", "p"))
	s := def(t, nil)
	if got := ids(s.Decide(Request{Model: "m"}, ix, loads{}).Ranked); got != "c,a,b" {
		t.Errorf("tie-break by (node, id): %s", got)
	}
	d := s.Decide(Request{Model: "m"}, ix, loads{"c": {KVKnown: true, KVUsage: 0.9}, "b": {KVKnown: true, KVUsage: 0.1}})
	if got := ids(d.Ranked); got != "b,a,c" {
		t.Errorf("kv headroom: %s", got)
	}
}

// A session stays on its instance while that instance is a candidate,
// and only sessions of an instance that goes move.
func TestSessionAffinity(t *testing.T) {
	var list []registry.Instance
	for i := 0; i < 8; i++ {
		list = append(list, inst(fmt.Sprintf("i%d", i), fmt.Sprintf("n%d", i), "p"))
	}
	s := def(t, nil)
	ix := index(list...)
	home := map[string]string{}
	for k := 0; k < 200; k++ {
		key := fmt.Sprintf("session-%d", k)
		d := s.Decide(Request{Model: "m", SessionKey: key}, ix, loads{})
		home[key] = d.Ranked[0].ID
		// Load elsewhere does not move it.
		l := loads{}
		for _, in := range list {
			if in.ID != home[key] {
				l[in.ID] = Load{InFlight: 0}
			} else {
				l[in.ID] = Load{InFlight: 3}
			}
		}
		if got := s.Decide(Request{Model: "m", SessionKey: key}, ix, l).Ranked[0].ID; got != home[key] {
			t.Fatalf("%s moved from %s to %s under load", key, home[key], got)
		}
	}
	// i3 goes: only its sessions move.
	ix2 := index(append(append([]registry.Instance{}, list[:3]...), list[4:]...)...)
	moved := 0
	for key, h := range home {
		got := s.Decide(Request{Model: "m", SessionKey: key}, ix2, loads{}).Ranked[0].ID
		if h != "i3" && got != h {
			t.Fatalf("%s moved from %s to %s though its instance stayed", key, h, got)
		}
		if h == "i3" {
			moved++
		}
	}
	if moved == 0 || moved == len(home) {
		t.Errorf("sessions on i3: %d of %d (hashing not spreading)", moved, len(home))
	}
}

func TestPrefixAffinityAndImbalanceFallback(t *testing.T) {
	table := NewPrefixTable(1000)
	s := def(t, table)
	ix := index(inst("a", "n1", "p"), inst("b", "n2", "p"), inst("c", "n3", "p", func(i *registry.Instance) { i.Slots = 64 }))
	prompt := strings.Repeat("You are a helpful assistant. ", 20)
	req := Request{Model: "m", PrefixHashes: PrefixHashes(prompt)}
	if len(req.PrefixHashes) != len(prompt)/PrefixBlockChars {
		t.Fatalf("%d hashes", len(req.PrefixHashes))
	}
	// Seed: the prefix went to c.
	c, _ := ix.Snap.Instances[2], 0
	table.Observe(req, c)
	d := s.Decide(req, ix, loads{"c": {InFlight: 1}})
	if d.Ranked[0].ID != "c" {
		t.Fatalf("prefix affinity ignored: %v %v", ids(d.Ranked), d.Reasons)
	}
	// A longer prompt sharing the prefix also goes to c.
	req2 := Request{Model: "m", PrefixHashes: PrefixHashes(prompt + strings.Repeat("question ", 30))}
	if got := s.Decide(req2, ix, loads{}).Ranked[0].ID; got != "c" {
		t.Errorf("shared prefix went to %s", got)
	}
	// c far busier than the rest: fall back to least loaded.
	if got := s.Decide(req, ix, loads{"c": {InFlight: 20}}).Ranked[0].ID; got == "c" {
		t.Errorf("imbalanced load still followed the prefix")
	}
	// Bounded table.
	small := NewPrefixTable(4)
	small.Observe(req, c)
	if small.Len() != 4 {
		t.Errorf("table len %d", small.Len())
	}
}

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

func TestProfileConfig(t *testing.T) {
	if _, err := (ProfileConfig{Filters: []string{"nope"}}).Build(nil); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown filter: %v", err)
	}
	if _, err := (ProfileConfig{Scorers: []ScorerWeights{{"x", 1}}}).Build(nil); err == nil || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("unknown scorer: %v", err)
	}
	if _, err := (ProfileConfig{Scorers: []ScorerWeights{{ScorerLeastLoaded, -1}}}).Build(nil); err == nil {
		t.Error("negative weight accepted")
	}
	// Weights matter: with only kv-headroom, load is ignored.
	p, _ := ProfileConfig{Filters: []string{FilterHealthy}, Scorers: []ScorerWeights{{ScorerKVHeadroom, 1}}}.Build(nil)
	ix := index(inst("a", "n1", "p"), inst("b", "n2", "p"))
	d := New(p).Decide(Request{Model: "m"}, ix, loads{"a": {InFlight: 9, KVKnown: true, KVUsage: 0.1}, "b": {KVKnown: true, KVUsage: 0.5}})
	if d.Ranked[0].ID != "a" {
		t.Errorf("kv-only profile chose %s", d.Ranked[0].ID)
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

func TestExplain(t *testing.T) {
	ix := index(inst("a", "n1", "p"), inst("b", "n2", "p", func(i *registry.Instance) { i.Health = registry.HealthCritical }))
	s := def(t, nil)
	if d := s.Decide(Request{Model: "m"}, ix, loads{}); len(d.Reasons) != 0 {
		t.Errorf("reasons without Explain: %v", d.Reasons)
	}
	d := s.Decide(Request{Model: "m", Explain: true}, ix, loads{})
	got := strings.Join(d.Reasons, "; ")
	if !strings.Contains(got, "healthy removed 1") || !strings.Contains(got, "chose a on n1") {
		t.Errorf("reasons: %s", got)
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

// Property over seeded random fleets, small and sampled: a session stays
// on its instance when other instances go unhealthy, and moves when its
// own does.
func TestSessionStaysWhileHealthy(t *testing.T) {
	rng := rand.New(rand.NewSource(11))
	s := def(t, nil)
	for trial := 0; trial < 20; trial++ {
		n := []int{5, 40, 300, 1200}[trial%4]
		var list []registry.Instance
		l := loads{}
		for i := 0; i < n; i++ {
			in := inst(fmt.Sprintf("i%04d", i), fmt.Sprintf("n%04d", rng.Intn(n)), "p")
			if rng.Intn(6) == 0 {
				in.Health = registry.HealthCritical
			}
			list = append(list, in)
			l[in.ID] = Load{InFlight: rng.Intn(3)}
		}
		ix := index(slices.Clone(list)...)
		for k := 0; k < 20; k++ {
			req := Request{Model: "m", SessionKey: fmt.Sprintf("t%d-s%d", trial, k), SampleSeed: uint64(k)}
			home := s.Decide(req, ix, l).Ranked[0]
			mark := func(id string) *Index {
				l2 := slices.Clone(list)
				for i := range l2 {
					if l2[i].ID == id {
						l2[i].Health = registry.HealthCritical
					}
				}
				return index(l2...)
			}
			other := list[rng.Intn(n)].ID
			if other != home.ID {
				req.SampleSeed++ // and another sample
				if got := s.Decide(req, mark(other), l).Ranked[0].ID; got != home.ID {
					t.Fatalf("n=%d %s: %s went unhealthy and the session moved %s → %s", n, req.SessionKey, other, home.ID, got)
				}
			}
			if d := s.Decide(req, mark(home.ID), l); len(d.Ranked) > 0 && d.Ranked[0].ID == home.ID {
				t.Fatalf("n=%d %s stayed on unhealthy %s", n, req.SessionKey, home.ID)
			}
		}
	}
}
