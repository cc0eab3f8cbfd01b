package scheduler

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
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
