package scaler

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// shared is what routers share through Consul: one session per router
// (TTL, renewed; its keys vanish when the router dies), a lock key per
// pool (<prefix>/<pool>/leader: its holder decides for the pool) and each
// router's demand per pool (<prefix>/<pool>/demand/<router>).
type shared struct {
	c      *consul.Client
	prefix string
	id     string
	ttl    time.Duration
	log    hclog.Logger

	mu      sync.Mutex
	session string
	ready   chan struct{} // closed once a session exists
	last    map[string]demand
	wrote   map[string]time.Time
}

// demand is one router's demand for a pool, as stored in KV.
type demand struct {
	LastMs   int64 `json:"last_ms"` // last request start or end, unix ms; 0 never
	InFlight int   `json:"in_flight"`
	Queued   int   `json:"queued"`
}

func (d demand) last() time.Time {
	if d.LastMs == 0 {
		return time.Time{}
	}
	return time.UnixMilli(d.LastMs)
}

func (d demand) merge(o demand) demand {
	return demand{LastMs: max(d.LastMs, o.LastMs), InFlight: d.InFlight + o.InFlight, Queued: d.Queued + o.Queued}
}

func newShared(c *consul.Client, prefix, id string, ttl time.Duration, log hclog.Logger) *shared {
	return &shared{c: c, prefix: strings.Trim(prefix, "/"), id: id, ttl: ttl, log: log, ready: make(chan struct{}),
		last: map[string]demand{}, wrote: map[string]time.Time{}}
}

// run keeps a session alive until ctx ends, making a new one when it is
// lost (the locks it held are then free for other routers).
func (s *shared) run(ctx context.Context) {
	for ctx.Err() == nil {
		wo := (&consul.WriteOptions{}).WithContext(ctx)
		id, _, err := s.c.Session().Create(&consul.SessionEntry{Name: "llorch-scaler " + s.id, TTL: s.ttl.String(),
			Behavior: consul.SessionBehaviorDelete, LockDelay: time.Second}, wo)
		if err != nil {
			s.log.Warn("consul session for pool scaling failed", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		s.mu.Lock()
		s.session = id
		select {
		case <-s.ready:
		default:
			close(s.ready)
		}
		s.wrote = map[string]time.Time{}
		s.mu.Unlock()
		s.log.Debug("consul session for pool scaling", "session", id)
		err = s.c.Session().RenewPeriodic(s.ttl.String(), id, nil, ctx.Done())
		if ctx.Err() == nil {
			s.log.Warn("consul session for pool scaling lost; making a new one (pool locks are released)", "error", err)
		}
	}
}

func (s *shared) sess() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session
}

// release destroys the session: its locks go to the other routers at once.
func (s *shared) release() {
	if id := s.sess(); id != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, _ = s.c.Session().Destroy(id, (&consul.WriteOptions{}).WithContext(ctx))
	}
}

// publish writes this router's demand for a pool when it changed, and at
// least every few seconds while it has any (keys live with the session).
func (s *shared) publish(ctx context.Context, pool string, d demand) {
	sess := s.sess()
	if sess == "" {
		return
	}
	s.mu.Lock()
	prev, seen := s.last[pool]
	stale := time.Since(s.wrote[pool]) > 5*time.Second
	s.mu.Unlock()
	if seen && prev == d && !(stale && (d.InFlight > 0 || d.Queued > 0)) {
		return
	}
	b, _ := json.Marshal(d)
	ok, _, err := s.c.KV().Acquire(&consul.KVPair{Key: s.prefix + "/" + pool + "/demand/" + s.id, Value: b, Session: sess},
		(&consul.WriteOptions{}).WithContext(ctx))
	if err != nil || !ok {
		s.log.Debug("publishing pool demand failed", "pool", pool, "error", err)
		return
	}
	s.mu.Lock()
	s.last[pool], s.wrote[pool] = d, time.Now()
	s.mu.Unlock()
}

// lead tries the pool's lock; true while this router holds it.
func (s *shared) lead(ctx context.Context, pool string) bool {
	sess := s.sess()
	if sess == "" {
		return false
	}
	key := s.prefix + "/" + pool + "/leader"
	qo := (&consul.QueryOptions{}).WithContext(ctx)
	kv, _, err := s.c.KV().Get(key, qo)
	if err != nil {
		return false // Consul unreachable: nobody can prove it leads
	}
	if kv != nil && kv.Session == sess {
		return true
	}
	if kv != nil && kv.Session != "" {
		return false
	}
	ok, _, err := s.c.KV().Acquire(&consul.KVPair{Key: key, Value: []byte(s.id), Session: sess}, (&consul.WriteOptions{}).WithContext(ctx))
	return err == nil && ok
}

// others sums the demand the other routers published for a pool.
func (s *shared) others(ctx context.Context, pool string) (demand, bool) {
	pairs, _, err := s.c.KV().List(s.prefix+"/"+pool+"/demand/", (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return demand{}, false
	}
	var sum demand
	for _, kv := range pairs {
		if strings.HasSuffix(kv.Key, "/"+s.id) {
			continue
		}
		var d demand
		if json.Unmarshal(kv.Value, &d) == nil {
			sum = sum.merge(d)
		}
	}
	return sum, true
}
