package router

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/enginestate"
	"github.com/llorch/llorch/scheduler"
)

// SchedulerPlacer places requests with the scheduler's filter/scorer
// profile: session affinity (X-Session-Id or the body's "user"), prompt-
// prefix affinity, load and KV headroom. It owns the scheduler's mutable
// state (the prefix table) and a per-snapshot index, built by Prepare when
// a snapshot arrives (off the request path) and read lock-free.
type SchedulerPlacer struct {
	sched  *scheduler.Scheduler
	prefix *scheduler.PrefixTable

	// seq varies each request's sample of a large fleet, so requests
	// without a session or a shared prompt do not all sample the same
	// instances.
	seq atomic.Uint64

	// engines is the engines' own load reports (nil: this router's
	// in-flight counts only).
	engines *enginestate.Poller
	// resv counts placements not yet started (reserve.go); place holds
	// placeMu from decision to reservation so two concurrent requests
	// cannot both take one free slot.
	resv    reservations
	placeMu sync.Mutex

	// cur is the index of the newest prepared snapshot, prev the one
	// before (a request that read the view just before a publish still
	// finds its index). mu serializes builds only.
	cur, prev atomic.Pointer[builtIndex]
	mu        sync.Mutex
	observe   func(scheduler.Decision)
}

// builtIndex is a finished index and the identity of its snapshot.
type builtIndex struct {
	key *registry.Instance // snapshots are immutable: same array, same snapshot
	n   int
	ix  *scheduler.Index
}

func (b *builtIndex) of(snap registry.Snapshot) bool {
	return b != nil && b.key == unsafe.SliceData(snap.Instances) && b.n == len(snap.Instances)
}

// NewSchedulerPlacer builds a placer from a profile config.
func NewSchedulerPlacer(cfg scheduler.ProfileConfig) (*SchedulerPlacer, error) {
	table := scheduler.NewPrefixTable(1 << 16)
	p, err := cfg.Build(table)
	if err != nil {
		return nil, err
	}
	return &SchedulerPlacer{sched: scheduler.New(p), prefix: table}, nil
}

// PlacerFromConfig is the placer a router runs with: the scheduler with the
// built-in profile (""), with a profile file, "least-in-flight" or "round-robin".
func PlacerFromConfig(profile string) (Placer, error) {
	switch profile {
	case "least-in-flight":
		return LeastInFlight{}, nil
	case "round-robin":
		return &RoundRobin{}, nil
	case "":
		return NewSchedulerPlacer(scheduler.DefaultProfileConfig())
	}
	cfg, err := scheduler.LoadProfileConfig(profile)
	if err != nil {
		return nil, err
	}
	return NewSchedulerPlacer(cfg)
}

// OnDecision registers a hook called with every decision (metrics).
func (p *SchedulerPlacer) OnDecision(fn func(scheduler.Decision)) { p.observe = fn }

// Prepare builds the index for a snapshot about to be published (the
// router calls it from discovery's goroutine).
func (p *SchedulerPlacer) Prepare(snap registry.Snapshot) {
	b := &builtIndex{key: unsafe.SliceData(snap.Instances), n: len(snap.Instances), ix: scheduler.NewIndex(snap)}
	p.mu.Lock()
	p.prev.Store(p.cur.Load())
	p.cur.Store(b)
	p.mu.Unlock()
}

// index is the snapshot's finished index. A snapshot nobody prepared (a
// caller outside the router) is indexed here, once.
func (p *SchedulerPlacer) index(snap registry.Snapshot) *scheduler.Index {
	if b := p.cur.Load(); b.of(snap) {
		return b.ix
	}
	if b := p.prev.Load(); b.of(snap) {
		return b.ix
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.cur.Load(); b.of(snap) {
		return b.ix
	}
	b := &builtIndex{key: unsafe.SliceData(snap.Instances), n: len(snap.Instances), ix: scheduler.NewIndex(snap)}
	p.prev.Store(p.cur.Load())
	p.cur.Store(b)
	return b.ix
}

// Place implements Placer.
func (p *SchedulerPlacer) Place(req PlaceRequest, snap registry.Snapshot) ([]registry.Instance, error) {
	sreq := scheduler.Request{Model: req.Model, Path: req.Path, SessionKey: req.Session, Placement: req.Placement}
	sreq.AffinityKey, sreq.PrefixHashes = promptShape(req.Prefix)
	if sreq.SessionKey == "" {
		sreq.SessionKey = req.User
	}
	sreq.SampleSeed = p.seq.Add(1)
	ix := p.index(snap)
	p.placeMu.Lock()
	d := p.sched.Decide(sreq, ix, liveLoad{req.Local, p.engines, &p.resv})
	if d.Err == nil && !d.Saturated {
		p.resv.add(d.Ranked[0].ID, startedOf(req.Local, d.Ranked[0].ID), time.Now())
	}
	p.placeMu.Unlock()
	if p.observe != nil {
		p.observe(d)
	}
	switch {
	case d.Err != nil:
		return nil, d.Err
	case d.Saturated:
		return nil, &NoCapacityError{Model: req.Model, RetryAfter: time.Second, Saturated: true}
	}
	p.prefix.Observe(sreq, d.Ranked[0])
	return d.Ranked, nil
}

// promptPrefix is what prefix affinity reads of a body: the body itself,
// parsed canonically by promptShape only once placement needs it.
func promptPrefix(body []byte) []byte { return body }
