// Package scaler makes Nomad engine pools follow demand: it learns from
// the Nomad API the pools (jobs with llorch meta and a range) that serve
// each model, wakes a pool at zero when a request for its model finds no
// ready instance, scales up while requests queue or slots stay busy and
// down to min after the pool's idle time. Several routers share the work
// without fighting: each publishes its demand in Consul KV, one router
// per pool (the holder of a Consul session lock) makes the up and down
// decisions, and every scale request names Nomad's current count
// (JobModifyIndex) so a stale decision is refused rather than applied.
// It plugs into the router as a router.Demand.
package scaler

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/jobs"
)

// Load is the router's view of a model (router.Router implements it).
type Load interface {
	ModelLoad(model string) (queued, ready, slots int)
}

// Config configures a Scaler; zero durations take the defaults.
type Config struct {
	Nomad     *nomad.Client
	Namespace string // default: the client's (NOMAD_NAMESPACE), else "default"
	// Consul holds the per-pool lock and the routers' shared demand; nil
	// means one router alone decides from its own traffic.
	Consul   *consul.Client
	KVPrefix string // default llorch/scaler
	RouterID string // default the hostname and a random suffix
	Load     Load

	Interval     time.Duration // decision tick (default 2s)
	PoolRefresh  time.Duration // re-list pools from Nomad (default 15s)
	Sustain      time.Duration // pressure must last this long to scale up (default 10s)
	UpCooldown   time.Duration // between scale-ups of a pool (default 30s)
	DownCooldown time.Duration // after any change before scaling down (default 1m)
	// TargetBusy is the in-flight / slots ratio above which a pool is busy
	// (default 0.8); any queued request with a ready instance is pressure.
	TargetBusy float64
	SessionTTL time.Duration // Consul session TTL (default 15s)

	Logger     hclog.Logger
	Registerer prometheus.Registerer // nil: metrics not exported
	Now        func() time.Time
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Interval, 2*time.Second)
	def(&c.PoolRefresh, 15*time.Second)
	def(&c.Sustain, 10*time.Second)
	def(&c.UpCooldown, 30*time.Second)
	def(&c.DownCooldown, time.Minute)
	def(&c.SessionTTL, 15*time.Second)
	if c.TargetBusy <= 0 {
		c.TargetBusy = 0.8
	}
	if c.KVPrefix == "" {
		c.KVPrefix = "llorch/scaler"
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.RouterID == "" {
		h, _ := os.Hostname()
		c.RouterID = h + "-" + strconv.Itoa(os.Getpid())
	}
}

// pool is one Nomad job the scaler manages.
type pool struct {
	id, model string
	min, max  int
	idle      time.Duration

	desired     int    // Nomad's count, last read
	modifyIndex uint64 // the job's, with desired
	leader      bool
	waking      bool
	seen        time.Time // first seen: idle counts from here without requests
	lastChange  time.Time // last count change seen or made
	lastUp      time.Time
	pressure    time.Time // since when pressure lasts; zero: none
	lastAction  string
	lastAt      time.Time
}

// usage is one model's demand as this router sees it.
type usage struct {
	inFlight int
	last     time.Time
}

// Scaler is a router.Demand over Nomad pools.
type Scaler struct {
	cfg Config
	log hclog.Logger
	m   *metrics
	kv  *shared

	mu        sync.Mutex
	pools     map[string]*pool // by job id
	use       map[string]*usage
	refreshed time.Time
	kick      chan struct{}
	wg        sync.WaitGroup
}

// New makes a Scaler; Run drives it.
func New(cfg Config) (*Scaler, error) {
	if cfg.Nomad == nil || cfg.Load == nil {
		return nil, fmt.Errorf("scaler: a Nomad client and a load source are required")
	}
	cfg.defaults()
	s := &Scaler{cfg: cfg, log: cfg.Logger, pools: map[string]*pool{}, use: map[string]*usage{}, kick: make(chan struct{}, 1)}
	var err error
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	if cfg.Consul != nil {
		s.kv = newShared(cfg.Consul, cfg.KVPrefix+"/"+cfg.Namespace, cfg.RouterID, cfg.SessionTTL, s.log)
	}
	return s, nil
}

// Begin implements router.Demand.
func (s *Scaler) Begin(model string) {
	s.mu.Lock()
	u := s.usage(model)
	u.inFlight++
	u.last = s.cfg.Now()
	s.mu.Unlock()
}

// End implements router.Demand.
func (s *Scaler) End(model string) {
	s.mu.Lock()
	u := s.usage(model)
	u.inFlight = max(0, u.inFlight-1)
	u.last = s.cfg.Now()
	s.mu.Unlock()
}

func (s *Scaler) usage(model string) *usage {
	u := s.use[model]
	if u == nil {
		u = &usage{}
		s.use[model] = u
	}
	return u
}

// Wake implements router.Demand: a pool of the model already scaled up
// (or waking) means yes; a pool at zero is scaled to one — by any router:
// the target is "at least one" against Nomad's current count, so two
// routers waking it at once agree. Unknown models trigger a pool refresh
// and get false (404) until a pool serves them.
func (s *Scaler) Wake(model string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cands []*pool
	for _, p := range s.pools {
		if p.model == model && p.max > 0 {
			if p.desired > 0 || p.waking {
				return true
			}
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		if s.cfg.Now().Sub(s.refreshed) > time.Second {
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
		return false
	}
	sort.Slice(cands, func(a, b int) bool { return cands[a].id < cands[b].id })
	p := cands[0]
	p.waking = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.scale(p.id, 1, true, "wake", fmt.Sprintf("llorch router %s: a request for model %q waits and pool %s is at 0", s.cfg.RouterID, model, p.id))
		s.mu.Lock()
		p.waking = false
		s.mu.Unlock()
	}()
	return true
}

// Run refreshes pools and decides until ctx ends.
func (s *Scaler) Run(ctx context.Context) error {
	defer s.wg.Wait()
	if s.kv != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.kv.run(ctx) }()
	}
	s.refresh(ctx)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if s.kv != nil {
				s.kv.release()
			}
			return nil
		case <-s.kick:
			s.refresh(ctx)
		case <-t.C:
			if s.cfg.Now().Sub(s.refreshed) >= s.cfg.PoolRefresh {
				s.refresh(ctx)
			}
			s.tick(ctx)
		}
	}
}

// refresh lists the jobs carrying llorch meta with a range and reads
// each one's count.
func (s *Scaler) refresh(ctx context.Context) {
	q := (&nomad.QueryOptions{Namespace: s.cfg.Namespace}).WithContext(ctx)
	stubs, _, err := s.cfg.Nomad.Jobs().ListOptions(&nomad.JobListOptions{Fields: &nomad.JobListFields{Meta: true}}, q)
	s.mu.Lock()
	s.refreshed = s.cfg.Now()
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("listing pools from Nomad failed", "namespace", s.cfg.Namespace, "error", err)
		return
	}
	found := map[string]bool{}
	for _, st := range stubs {
		p, err := poolFromMeta(st.ID, st.Meta)
		if err != nil {
			s.log.Warn("ignoring a pool with bad scaling meta", "pool", st.ID, "error", err)
			continue
		}
		// A pool at zero is "dead" to Nomad but still ours to wake; only
		// a stopped job (nomad job stop) is out.
		if p == nil || st.Stop {
			continue
		}
		found[p.id] = true
		s.mu.Lock()
		old := s.pools[p.id]
		if old == nil {
			p.seen = s.cfg.Now()
			s.pools[p.id] = p
			s.log.Info("pool follows demand", "pool", p.id, "model", p.model, "min", p.min, "max", p.max, "idle", p.idle.String())
		} else {
			old.model, old.min, old.max, old.idle = p.model, p.min, p.max, p.idle
		}
		s.mu.Unlock()
		s.readCount(ctx, p.id)
	}
	s.mu.Lock()
	for id := range s.pools {
		if !found[id] {
			delete(s.pools, id)
			s.m.desired.DeleteLabelValues(id)
		}
	}
	s.mu.Unlock()
}

// poolFromMeta reads a job's llorch meta; nil when the job is not a
// ranged llorch pool.
func poolFromMeta(id string, meta map[string]string) (*pool, error) {
	model, maxS := meta[jobs.MetaModel], meta[jobs.MetaMax]
	if model == "" || maxS == "" {
		return nil, nil
	}
	p := &pool{id: id, model: model, idle: jobs.DefaultIdle}
	var err error
	if p.max, err = strconv.Atoi(maxS); err != nil || p.max < 1 {
		return nil, fmt.Errorf("%s=%q: want a count ≥ 1", jobs.MetaMax, maxS)
	}
	if v := meta[jobs.MetaMin]; v != "" {
		if p.min, err = strconv.Atoi(v); err != nil || p.min < 0 || p.min > p.max {
			return nil, fmt.Errorf("%s=%q: want 0..%d", jobs.MetaMin, v, p.max)
		}
	}
	if v := meta[jobs.MetaIdle]; v != "" {
		if p.idle, err = time.ParseDuration(v); err != nil || p.idle <= 0 {
			return nil, fmt.Errorf("%s=%q: want a duration", jobs.MetaIdle, v)
		}
	}
	return p, nil
}

// readCount reads Nomad's count for the pool's engine group.
func (s *Scaler) readCount(ctx context.Context, id string) (int, uint64, bool) {
	q := (&nomad.QueryOptions{Namespace: s.cfg.Namespace}).WithContext(ctx)
	st, _, err := s.cfg.Nomad.Jobs().ScaleStatus(id, q)
	if err != nil {
		s.log.Warn("reading a pool's count from Nomad failed", "pool", id, "error", err)
		return 0, 0, false
	}
	g, ok := st.TaskGroups[jobs.Group]
	if !ok {
		return 0, 0, false
	}
	s.mu.Lock()
	if p := s.pools[id]; p != nil {
		if p.desired != g.Desired && !p.lastChange.IsZero() {
			p.lastChange = s.cfg.Now() // someone (maybe another router) changed it
		}
		if p.lastChange.IsZero() {
			p.lastChange = s.cfg.Now()
		}
		p.desired, p.modifyIndex = g.Desired, st.JobModifyIndex
		s.m.desired.WithLabelValues(id).Set(float64(g.Desired))
	}
	s.mu.Unlock()
	return g.Desired, st.JobModifyIndex, true
}

// scale sets the pool's count to target against Nomad's current count:
// atLeast makes it "≥ target" (a wake never lowers a count). The request
// names the count's JobModifyIndex, so a change another router made in
// between wins and this one is re-read and reconsidered once.
func (s *Scaler) scale(id string, target int, atLeast bool, reason, message string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for attempt := 0; attempt < 2; attempt++ {
		cur, idx, ok := s.readCount(ctx, id)
		if !ok || cur == target || (atLeast && cur >= target) {
			return
		}
		req := &nomad.ScalingRequest{Count: ptr(int64(target)), Target: map[string]string{"Job": id, "Group": jobs.Group},
			Message: message, Meta: map[string]any{"llorch_router": s.cfg.RouterID, "llorch_reason": reason}, JobModifyIndex: idx}
		_, _, err := s.cfg.Nomad.Jobs().ScaleWithRequest(id, req, (&nomad.WriteOptions{Namespace: s.cfg.Namespace}).WithContext(ctx))
		if err != nil {
			s.log.Warn("scaling a pool failed", "pool", id, "from", cur, "to", target, "reason", reason, "error", err)
			continue
		}
		now := s.cfg.Now()
		s.mu.Lock()
		if p := s.pools[id]; p != nil {
			p.desired, p.lastChange, p.lastAt = target, now, now
			p.lastAction = fmt.Sprintf("scaled %d→%d (%s)", cur, target, reason)
			if target > cur {
				p.lastUp = now
			}
		}
		s.mu.Unlock()
		s.m.desired.WithLabelValues(id).Set(float64(target))
		s.m.actions.WithLabelValues(id, reason).Inc()
		s.log.Info("scaled pool", "pool", id, "from", cur, "to", target, "reason", reason, "message", message)
		return
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func ptr[T any](v T) *T { return &v }
