// Package enginestate is the router's live view of the engines' own load:
// a poller that asks every instance in the discovery snapshot for its busy
// slots, queue, KV-cache usage and prompt-cache counters, through the
// engine adapters (engine.Adapter.Load) with the engine token, the way the
// Gateway API inference extension's endpoint picker polls vLLM.
//
// Consul stays the source of membership and static facts; load never goes
// through the registry. A report is only trusted while it is fresh: one
// older than the stale limit makes the instance's load unknown, never idle.
package enginestate

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/registry"
)

// Defaults: a report every 200 ms (the endpoint picker's default refresh
// is 50 ms for vLLM's metrics; llama-server's /slots costs more), stale
// after five missed intervals.
const (
	DefaultInterval    = 200 * time.Millisecond
	DefaultStaleAfter  = 5
	DefaultConcurrency = 32
)

// Config tunes the poller.
type Config struct {
	// Interval between polls of one instance.
	Interval time.Duration
	// StaleAfter: a report older than this makes the load unknown
	// (default DefaultStaleAfter intervals).
	StaleAfter time.Duration
	// Timeout bounds one poll (default: the stale limit, less one interval).
	Timeout time.Duration
	// Concurrency bounds the polls in flight at once.
	Concurrency int
	// Token is the engine token, presented as a bearer token.
	Token  string
	Client *http.Client
	Logger hclog.Logger
	// OnReport is called after each successful report (the router wakes
	// the model's admission queue: a slot may have freed up that another
	// router's request held).
	OnReport func(inst registry.Instance, r Report)
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = DefaultStaleAfter * c.Interval
	}
	if c.Timeout <= 0 {
		c.Timeout = max(c.StaleAfter-c.Interval, c.Interval)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Client == nil {
		c.Client = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}

// Report is one successful poll of an instance.
type Report struct {
	Load engine.Load
	// At is when the poll was sent (the report describes the engine no
	// earlier than that).
	At time.Time
	// Others is how many of the engine's requests, busy slots and queue
	// together, this router does not account for (other routers' and
	// clients' requests), counted so that it errs high: the engine's busy
	// slots and queue less this router's requests still in flight after
	// the answer came, not counting those it started during the poll (they
	// may not have reached the engine). The queue is in it because this
	// router's requests may be waiting there: taken off the busy slots
	// alone, they would hide other routers' requests in those slots.
	Others int
	// OthersHeld is the larger of Others in this report and the one
	// before: a slot another router freed counts as free only once two
	// reports show it, so the router that freed it (which knows at once)
	// reuses it first, rather than every router claiming it from the same
	// report.
	OthersHeld int
	// HitRate is the prompt-cache hit rate over the router's observation
	// (cached / prompt tokens since the first report), else the engine's
	// own figure; HitKnown says whether there is one.
	HitRate  float64
	HitKnown bool
}

// Freshness of an instance's load.
type Freshness int

const (
	// Unknown: never reported (or the engine reports no load figures).
	Unknown Freshness = iota
	// Fresh: the last report is within the stale limit.
	Fresh
	// Stale: the engine reported before and stopped; its load is unknown
	// and must not be read as idle.
	Stale
)

func (f Freshness) String() string {
	switch f {
	case Fresh:
		return "fresh"
	case Stale:
		return "stale"
	}
	return "unknown"
}

// State is what the poller knows of one instance.
type State struct {
	Report    Report // the last successful report (zero if none)
	Freshness Freshness
	LastError string // the last poll's error, "" after a success
}

type entry struct {
	mu       sync.Mutex
	inst     registry.Instance
	last     Report
	have     bool
	lastErr  string
	polling  bool
	base     engine.CacheStats // counters at the first report: the hit-rate window starts there
	haveBase bool
}

// Poller polls the instances of the current snapshot. Create it with New
// and run Run; Get may be called concurrently.
type Poller struct {
	cfg       Config
	instances func() []registry.Instance
	local     Local
	now       func() time.Time

	mu sync.RWMutex
	m  map[string]*entry
}

// Local is the router's own count of its requests per instance id.
type Local interface {
	InFlight(id string) int
	Started(id string) int64 // ever started
}

type noLocal struct{}

func (noLocal) InFlight(string) int  { return 0 }
func (noLocal) Started(string) int64 { return 0 }

// New makes a poller over the instances instances returns (the current
// discovery snapshot); local is the router's own requests (nil: none).
func New(cfg Config, instances func() []registry.Instance, local Local) *Poller {
	if local == nil {
		local = noLocal{}
	}
	return &Poller{cfg: cfg.withDefaults(), instances: instances, local: local, now: time.Now, m: map[string]*entry{}}
}

// Interval is the configured poll interval.
func (p *Poller) Interval() time.Duration { return p.cfg.Interval }

// StaleAfter is the configured stale limit.
func (p *Poller) StaleAfter() time.Duration { return p.cfg.StaleAfter }

// Get is the poller's state of an instance.
func (p *Poller) Get(id string) State {
	p.mu.RLock()
	e := p.m[id]
	p.mu.RUnlock()
	if e == nil {
		return State{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := State{Report: e.last, LastError: e.lastErr}
	switch {
	case !e.have || !e.last.Load.Known:
		s.Freshness = Unknown
	case p.now().Sub(e.last.At) > p.cfg.StaleAfter:
		s.Freshness = Stale
	default:
		s.Freshness = Fresh
	}
	return s
}

// Run polls every interval until ctx ends, then waits for the polls in
// flight to return.
func (p *Poller) Run(ctx context.Context) {
	sem := make(chan struct{}, p.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	next := time.Now()
	after := func() time.Duration {
		next = next.Add(jittered(p.cfg.Interval))
		if now := time.Now(); next.Before(now) {
			next = now // fallen behind (the process was not running): poll now, without catching up
		}
		return time.Until(next)
	}
	t := time.NewTimer(after())
	defer t.Stop()
	for {
		live := p.sync(p.instances())
		for _, e := range live {
			e.mu.Lock()
			busy := e.polling
			e.polling = true
			e.mu.Unlock()
			if busy {
				continue // a slow engine is polled once at a time
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				e.mu.Lock()
				e.polling = false
				e.mu.Unlock()
				return
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				p.poll(ctx, e)
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(after())
	}
}

// jittered is the interval with a random tenth either way. Routers with
// the same interval would otherwise poll at a fixed phase to each other:
// when that phase is near zero they take their reports at the same moment
// and act on them at once, both claiming a slot either sees free (as if
// every report were the start-up burst).
func jittered(d time.Duration) time.Duration {
	if d < 5 {
		return d
	}
	return d - d/10 + rand.N(d/5)
}

// sync adds entries for new instances, drops those that left, and lists
// the live ones.
func (p *Poller) sync(insts []registry.Instance) []*entry {
	live := make(map[string]bool, len(insts))
	out := make([]*entry, 0, len(insts))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range insts {
		if live[in.ID] {
			continue
		}
		live[in.ID] = true
		e := p.m[in.ID]
		if e == nil {
			e = &entry{}
			p.m[in.ID] = e
		}
		e.mu.Lock()
		e.inst = in
		e.mu.Unlock()
		out = append(out, e)
	}
	for id := range p.m {
		if !live[id] {
			delete(p.m, id)
		}
	}
	return out
}

func (p *Poller) poll(ctx context.Context, e *entry) {
	e.mu.Lock()
	in := e.inst
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.polling = false
		e.mu.Unlock()
	}()
	a, err := engine.Get(in.Engine)
	if err != nil {
		p.fail(e, err)
		return
	}
	spec := engine.Spec{ModelName: in.Model, Slots: in.Slots, APIKey: p.cfg.Token}
	startedBefore := p.local.Started(in.ID)
	at := p.now()
	pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	l, err := a.Load(pctx, p.cfg.Client, in.URL(), spec)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			p.fail(e, err)
		}
		return
	}
	startedDuring := p.local.Started(in.ID) - startedBefore
	// This router's requests in flight throughout the poll (those started
	// and ended within it make the figure smaller, never larger): at the
	// engine they are in its busy slots or in its queue.
	mine := max(p.local.InFlight(in.ID)-int(startedDuring), 0)
	r := Report{Load: l, At: at, Others: max(l.SlotsBusy+l.QueueLen-mine, 0)}
	e.mu.Lock()
	r.OthersHeld = r.Others
	if e.have {
		r.OthersHeld = max(r.Others, e.last.Others)
	}
	if !e.haveBase && l.Cache.Counters {
		e.base, e.haveBase = l.Cache, true
	}
	r.HitRate, r.HitKnown = hitRate(e.base, l.Cache)
	e.last, e.have, e.lastErr = r, true, ""
	e.mu.Unlock()
	if p.cfg.OnReport != nil {
		p.cfg.OnReport(in, r)
	}
}

// hitRate is cached/prompt tokens since the first report; before any new
// prompt tokens, the engine's own lifetime figure.
func hitRate(base, now engine.CacheStats) (float64, bool) {
	if now.Counters && base.Counters {
		if d := now.PromptTokens - base.PromptTokens; d > 0 {
			return min(max((now.CachedTokens-base.CachedTokens)/d, 0), 1), true
		}
	}
	return now.HitRate()
}

func (p *Poller) fail(e *entry, err error) {
	e.mu.Lock()
	first := e.lastErr == ""
	e.lastErr = err.Error()
	id := e.inst.ID
	e.mu.Unlock()
	if first {
		p.cfg.Logger.Debug("engine load poll failed", "instance_id", id, "error", fmt.Sprint(err))
	}
}
