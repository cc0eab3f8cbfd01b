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
// state (the prefix table) and a per-snapshot index, rebuilt only when the
// discovery snapshot changes.
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

	mu      sync.Mutex
	ixKey   *registry.Instance // identity of the snapshot the index was built from
	ixLen   int
	ix      *scheduler.Index
	observe func(scheduler.Decision)
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

func (p *SchedulerPlacer) index(snap registry.Snapshot) *scheduler.Index {
	key := unsafe.SliceData(snap.Instances) // snapshots are immutable: same array, same snapshot
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ix == nil || key != p.ixKey || len(snap.Instances) != p.ixLen {
		p.ix, p.ixKey, p.ixLen = scheduler.NewIndex(snap), key, len(snap.Instances)
	}
	return p.ix
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
