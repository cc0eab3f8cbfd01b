// Package sim is a small discrete-event simulation of a fleet of engine
// instances with prefix caches, used to compare routing policies
// (prefix affinity, least loaded, round robin, the router's default
// profile) on cache hit rate and queueing delay. It drives the real
// scheduler package, so what it measures is what the router would do; the
// engines are modelled: each has a fixed number of slots, a FIFO queue in
// front of them and an LRU of cached prompt blocks.
package sim

import (
	"container/heap"
	"container/list"
	"fmt"
	"math"
	"math/rand"
	"slices"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/scheduler"
)

// Policy names a routing policy.
type Policy string

const (
	PrefixAffinity Policy = "prefix-affinity" // prefix-affinity 3 + least-loaded 2
	LeastLoaded    Policy = "least-loaded"
	RoundRobin     Policy = "round-robin"
	DefaultProfile Policy = "default-profile" // scheduler.DefaultProfileConfig, with session keys
)

// Policies is every policy Compare runs, in report order.
var Policies = []Policy{PrefixAffinity, DefaultProfile, LeastLoaded, RoundRobin}

// Config describes the fleet and the workload. Zero fields take the
// defaults of DefaultConfig.
type Config struct {
	Instances   int // engine instances of the one model
	Slots       int // parallel sequences per instance
	CacheBlocks int // prompt blocks each instance's prefix cache holds

	// Workload: every conversation starts with one of SystemPrompts shared
	// system prompts of SystemBlocks blocks; each turn appends TurnBlocks
	// blocks of history; after MaxTurns the session starts a new
	// conversation (new history, same system prompt).
	SystemPrompts int
	SystemBlocks  int
	Sessions      int
	TurnBlocks    int
	MaxTurns      int

	Requests      int
	ArrivalPerSec float64 // Poisson arrivals

	// Service time = uncached blocks × PrefillMsPerBlock + cached blocks ×
	// CachedMsPerBlock + DecodeMs.
	PrefillMsPerBlock float64
	CachedMsPerBlock  float64
	DecodeMs          float64

	Seed   int64
	Policy Policy
}

// DefaultConfig is a fleet of 8 instances × 4 slots at about 75% of its
// uncached capacity, with caches too small to hold every session
// everywhere: the case where routing decides the hit rate.
func DefaultConfig() Config {
	return Config{
		Instances: 8, Slots: 4, CacheBlocks: 600,
		SystemPrompts: 4, SystemBlocks: 16, Sessions: 240, TurnBlocks: 3, MaxTurns: 6,
		Requests: 20000, ArrivalPerSec: 90,
		PrefillMsPerBlock: 4, CachedMsPerBlock: 0.2, DecodeMs: 150,
		Seed: 1, Policy: PrefixAffinity,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setf := func(v *float64, def float64) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&c.Instances, d.Instances)
	set(&c.Slots, d.Slots)
	set(&c.CacheBlocks, d.CacheBlocks)
	set(&c.SystemPrompts, d.SystemPrompts)
	set(&c.SystemBlocks, d.SystemBlocks)
	set(&c.Sessions, d.Sessions)
	set(&c.TurnBlocks, d.TurnBlocks)
	set(&c.MaxTurns, d.MaxTurns)
	set(&c.Requests, d.Requests)
	setf(&c.ArrivalPerSec, d.ArrivalPerSec)
	setf(&c.PrefillMsPerBlock, d.PrefillMsPerBlock)
	setf(&c.CachedMsPerBlock, d.CachedMsPerBlock)
	setf(&c.DecodeMs, d.DecodeMs)
	if c.Policy == "" {
		c.Policy = d.Policy
	}
	return c
}

// Result is one policy's outcome.
type Result struct {
	Policy   Policy
	Requests int
	// HitRate is the fraction of prompt blocks found in the chosen
	// instance's cache when the request started.
	HitRate       float64
	MeanQueueMs   float64
	P99QueueMs    float64
	MeanLatencyMs float64 // queueing + service
	P99LatencyMs  float64
	// MaxShare is the busiest instance's share of requests (1/Instances is
	// perfectly even): shows whether a policy hot-spots.
	MaxShare float64
}

func (r Result) String() string {
	return fmt.Sprintf("%-16s hit %5.1f%%  queue mean %7.1f ms p99 %7.1f ms  latency mean %6.1f ms p99 %7.1f ms  max share %4.1f%%",
		r.Policy, 100*r.HitRate, r.MeanQueueMs, r.P99QueueMs, r.MeanLatencyMs, r.P99LatencyMs, 100*r.MaxShare)
}

// Compare runs every policy on the same workload (same seed).
func Compare(cfg Config) ([]Result, error) {
	var out []Result
	for _, p := range Policies {
		cfg.Policy = p
		r, err := Run(cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// engine is one simulated instance.
type engine struct {
	inst    registry.Instance
	running int
	queue   []*job
	cache   *blockLRU
	served  int
}

type job struct {
	arrive float64
	blocks []uint64
	start  float64
}

// Run simulates cfg.Requests requests under cfg.Policy. It is
// deterministic for a given Config.
func Run(cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	rng := rand.New(rand.NewSource(cfg.Seed))

	engines := make([]*engine, cfg.Instances)
	list := make([]registry.Instance, cfg.Instances)
	byID := map[string]*engine{}
	for i := range engines {
		in := registry.Instance{ID: fmt.Sprintf("inst-%03d", i), NodeID: fmt.Sprintf("node-%03d", i), Model: "m",
			Slots: cfg.Slots, Health: registry.HealthPassing}
		engines[i] = &engine{inst: in, cache: newBlockLRU(cfg.CacheBlocks)}
		list[i] = in
		byID[in.ID] = engines[i]
	}
	ix := scheduler.NewIndex(registry.Snapshot{Instances: list})

	table := scheduler.NewPrefixTable(1 << 16)
	var sched *scheduler.Scheduler
	var pc scheduler.ProfileConfig
	switch cfg.Policy {
	case PrefixAffinity:
		pc = scheduler.ProfileConfig{Scorers: []scheduler.ScorerWeights{{Name: scheduler.ScorerPrefix, Weight: 3}, {Name: scheduler.ScorerLeastLoaded, Weight: 2}}}
	case LeastLoaded:
		pc = scheduler.ProfileConfig{Scorers: []scheduler.ScorerWeights{{Name: scheduler.ScorerLeastLoaded, Weight: 1}}}
	case DefaultProfile:
		pc = scheduler.DefaultProfileConfig()
	case RoundRobin:
	default:
		return Result{}, fmt.Errorf("sim: unknown policy %q (known: %v)", cfg.Policy, Policies)
	}
	if cfg.Policy != RoundRobin {
		// Engines queue requests themselves here, as llama-server and vLLM
		// do; without the capacity filter every decision places, so the
		// policies are compared on where they put work, not on admission.
		pc.Filters = slices.DeleteFunc(slices.Clone(pc.Filters), func(f string) bool { return f == scheduler.FilterCapacity })
		p, err := pc.Build(table)
		if err != nil {
			return Result{}, fmt.Errorf("sim: %w", err)
		}
		sched = scheduler.New(p)
	}
	load := loadView(byID)

	// Sessions: system prompt, conversation number, turn.
	type session struct{ sys, conv, turn int }
	sessions := make([]session, cfg.Sessions)
	for i := range sessions {
		sessions[i].sys = rng.Intn(cfg.SystemPrompts)
	}

	var done completions
	var queueMs, latMs []float64
	var hits, blocks int
	finish := func(now float64, e *engine, j *job) {
		j.start = now
		cached := e.cache.matchPrefix(j.blocks)
		e.cache.touch(j.blocks)
		hits += cached
		blocks += len(j.blocks)
		svc := float64(len(j.blocks)-cached)*cfg.PrefillMsPerBlock + float64(cached)*cfg.CachedMsPerBlock + cfg.DecodeMs
		e.running++
		heap.Push(&done, completion{at: now + svc, e: e, arrive: j.arrive})
		queueMs = append(queueMs, now-j.arrive)
	}
	complete := func(c completion) {
		c.e.running--
		latMs = append(latMs, c.at-c.arrive)
		if len(c.e.queue) > 0 {
			j := c.e.queue[0]
			c.e.queue = c.e.queue[1:]
			finish(c.at, c.e, j)
		}
	}

	now := 0.0
	rr := 0
	for n := 0; n < cfg.Requests; n++ {
		now += rng.ExpFloat64() * 1000 / cfg.ArrivalPerSec
		for done.Len() > 0 && done[0].at <= now {
			complete(heap.Pop(&done).(completion))
		}
		si := rng.Intn(cfg.Sessions)
		s := &sessions[si]
		j := &job{arrive: now, blocks: promptBlocks(s.sys, si, s.conv, s.turn, cfg)}
		if s.turn++; s.turn >= cfg.MaxTurns {
			s.turn = 0
			s.conv++
		}
		var e *engine
		if cfg.Policy == RoundRobin {
			e = engines[rr%len(engines)]
			rr++
		} else {
			req := scheduler.Request{Model: "m", PrefixHashes: j.blocks[:min(len(j.blocks), scheduler.MaxPrefixBlocks)]}
			if cfg.Policy == DefaultProfile {
				req.SessionKey = fmt.Sprint(si)
			}
			d := sched.Decide(req, ix, load)
			chosen, ok := d.Chosen()
			if !ok {
				return Result{}, fmt.Errorf("sim: no placement: %v %v", d.Err, d.Reasons)
			}
			table.Observe(req, chosen)
			e = byID[chosen.ID]
		}
		e.served++
		if e.running < cfg.Slots {
			finish(now, e, j)
		} else {
			e.queue = append(e.queue, j)
		}
	}
	for done.Len() > 0 {
		complete(heap.Pop(&done).(completion))
	}

	r := Result{Policy: cfg.Policy, Requests: cfg.Requests, HitRate: float64(hits) / float64(max(blocks, 1))}
	r.MeanQueueMs, r.P99QueueMs = meanP99(queueMs)
	r.MeanLatencyMs, r.P99LatencyMs = meanP99(latMs)
	for _, e := range engines {
		r.MaxShare = math.Max(r.MaxShare, float64(e.served)/float64(cfg.Requests))
	}
	return r, nil
}

// promptBlocks is the chained block hashes of a session's prompt at a
// turn: the shared system prompt, then the conversation's history.
func promptBlocks(sys, session, conv, turn int, cfg Config) []uint64 {
	out := make([]uint64, 0, cfg.SystemBlocks+(turn+1)*cfg.TurnBlocks)
	h := mix(0x5eed, uint64(sys))
	for i := 0; i < cfg.SystemBlocks; i++ {
		h = mix(h, uint64(i))
		out = append(out, h)
	}
	conversation := mix(uint64(session)<<20, uint64(conv))
	for i := 0; i < (turn+1)*cfg.TurnBlocks; i++ {
		h = mix(h, conversation+uint64(i))
		out = append(out, h)
	}
	return out
}

// mix is splitmix64 over a and b: chained, so equal hashes mean equal
// prefixes.
func mix(a, b uint64) uint64 {
	x := a*0x9e3779b97f4a7c15 ^ b
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func meanP99(v []float64) (mean, p99 float64) {
	if len(v) == 0 {
		return 0, 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return sum / float64(len(v)), s[min(len(s)-1, len(s)*99/100)]
}

// loadView is what the router would see: its own in-flight requests to
// each instance (running and queued there) and the engine's busy slots.
type loadView map[string]*engine

func (l loadView) Load(id string) scheduler.Load {
	e := l[id]
	return scheduler.Load{InFlight: e.running + len(e.queue), SlotsBusy: e.running}
}

type completion struct {
	at     float64
	e      *engine
	arrive float64
}

// completions is a min-heap by time; ties by instance id so runs are
// deterministic.
type completions []completion

func (c completions) Len() int { return len(c) }
func (c completions) Less(i, j int) bool {
	if c[i].at != c[j].at {
		return c[i].at < c[j].at
	}
	return c[i].e.inst.ID < c[j].e.inst.ID
}
func (c completions) Swap(i, j int) { c[i], c[j] = c[j], c[i] }
func (c *completions) Push(x any)   { *c = append(*c, x.(completion)) }
func (c *completions) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// blockLRU is an engine's prefix cache: the most recently used blocks.
type blockLRU struct {
	cap   int
	m     map[uint64]*list.Element
	order *list.List
}

func newBlockLRU(capacity int) *blockLRU {
	return &blockLRU{cap: capacity, m: map[uint64]*list.Element{}, order: list.New()}
}

// matchPrefix counts the leading blocks in the cache: an engine reuses a
// cached prefix only up to the first block it lacks.
func (c *blockLRU) matchPrefix(blocks []uint64) int {
	for i, b := range blocks {
		if _, ok := c.m[b]; !ok {
			return i
		}
	}
	return len(blocks)
}

func (c *blockLRU) touch(blocks []uint64) {
	for _, b := range blocks {
		if e, ok := c.m[b]; ok {
			c.order.MoveToFront(e)
			continue
		}
		c.m[b] = c.order.PushFront(b)
		if c.order.Len() > c.cap {
			old := c.order.Back()
			c.order.Remove(old)
			delete(c.m, old.Value.(uint64))
		}
	}
}
