package scheduler

import (
	"fmt"
	"sort"
	"time"

	"github.com/llorch/llorch/instance"
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
	list := make([]instance.Instance, n)
	load := mapLoad{}
	for i := range list {
		list[i] = instance.Instance{ID: fmt.Sprintf("inst-%05d", i), NodeID: fmt.Sprintf("node-%04d", i/4), PoolID: "p",
			Model: "m", Slots: 8, Ctx: 8192, Health: instance.HealthPassing}
		load[list[i].ID] = Load{InFlight: i % 7, KVKnown: true, KVUsage: float64(i%10) / 10}
	}
	instance.Sort(list)
	ix := NewIndex(registry.Snapshot{Instances: list})
	table := NewPrefixTable(1 << 16)
	p, _ := DefaultProfileConfig().Build(table)
	s := New(p)
	prompt := ""
	for len(prompt) < 1024 {
		prompt += "You are a helpful assistant that answers briefly. "
	}
	req := Request{Model: "m", Path: "/v1/chat/completions", PrefixHashes: PrefixHashes(prompt)}
	var samples []time.Duration
	start := time.Now()
	for k := 0; time.Since(start) < d || k < 50; k++ {
		req.SessionKey = fmt.Sprint(k % 97)
		t0 := time.Now()
		dec := s.Decide(req, ix, load)
		samples = append(samples, time.Since(t0))
		if c, ok := dec.Chosen(); ok && k%16 == 0 {
			table.Observe(req, c)
		}
	}
	total := time.Since(start)
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return BenchResult{
		Candidates: n,
		PerSec:     float64(len(samples)) / total.Seconds(),
		P50:        samples[len(samples)/2],
		P99:        samples[len(samples)*99/100],
	}
}
