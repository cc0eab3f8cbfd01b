package scheduler

import (
	"fmt"
	"slices"
	"time"

	"github.com/llorch/llorch/registry"
)

type mapLoad map[string]Load

func (m mapLoad) Load(id string) Load { return m[id] }

// BenchResult is one row of the decision benchmark.
type BenchResult struct {
	Candidates int
	PerSec     float64
	P50, P99   time.Duration
}

// BenchDecide measures Decide with the default profile over n candidate
// instances of one model (varied load, a session key and a prompt prefix)
// for about d, timing each decision. make bench and the tests call it.
func BenchDecide(n int, d time.Duration) BenchResult {
	s, ix, load, req := benchFleet(n)
	table := s.prefix
	samples := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	for k := 0; time.Since(start) < d || k < 50; k++ {
		req.SessionKey = benchSessions[k%len(benchSessions)]
		req.SampleSeed = uint64(k)
		t0 := time.Now()
		dec := s.Decide(req, ix, load)
		samples = append(samples, time.Since(t0))
		if c, ok := dec.Chosen(); ok && k%16 == 0 {
			table.Observe(req, c)
		}
	}
	total := time.Since(start)
	slices.Sort(samples)
	return BenchResult{
		Candidates: n,
		PerSec:     float64(len(samples)) / total.Seconds(),
		P50:        samples[len(samples)/2],
		P99:        samples[len(samples)*99/100],
	}
}

// benchSessions are the session keys the benchmark cycles through, made
// once so the timed loop formats nothing.
var benchSessions = func() []string {
	out := make([]string, 97)
	for i := range out {
		out[i] = fmt.Sprint(i)
	}
	return out
}()

// benchFleet is n instances of one model on n/4 nodes with varied load and
// KV use, the default profile, and a chat request with a 1 KiB system
// prompt.
func benchFleet(n int) (*Scheduler, *Index, LoadView, Request) {
	list := make([]registry.Instance, n)
	load := mapLoad{}
	for i := range list {
		list[i] = registry.Instance{ID: fmt.Sprintf("inst-%05d", i), NodeID: fmt.Sprintf("node-%04d", i/4), PoolID: "p",
			Model: "m", Slots: 8, Ctx: 8192, Health: registry.HealthPassing}
		load[list[i].ID] = Load{InFlight: i % 7, KVKnown: true, KVUsage: float64(i%10) / 10}
	}
	registry.Sort(list)
	ix := NewIndex(registry.Snapshot{Instances: list})
	p, _ := DefaultProfileConfig().Build(NewPrefixTable(1 << 16))
	prompt := ""
	for len(prompt) < 1024 {
		prompt += "You are a helpful assistant that answers briefly. "
	}
	return New(p), ix, load, Request{Model: "m", Path: "/v1/chat/completions", PrefixHashes: PrefixHashes(prompt)}
}
