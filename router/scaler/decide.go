package scaler

import (
	"context"
	"fmt"
	"time"
)

// tick publishes this router's demand and, for the pools it leads,
// decides.
func (s *Scaler) tick(ctx context.Context) {
	now := s.cfg.Now()
	type view struct {
		p                    pool
		queued, ready, slots int
		inFlight             int
		last                 time.Time
	}
	s.mu.Lock()
	var views []view
	for _, p := range s.pools {
		v := view{p: *p}
		v.queued, v.ready, v.slots = s.cfg.Load.ModelLoad(p.model)
		if u := s.use[p.model]; u != nil {
			v.inFlight, v.last = max(0, u.inFlight-v.queued), u.last // Begin counts queued requests too
		}
		views = append(views, v)
	}
	s.mu.Unlock()
	for _, v := range views {
		d := demand{LastMs: v.last.UnixMilli(), InFlight: v.inFlight, Queued: v.queued}
		if v.last.IsZero() {
			d.LastMs = 0
		}
		leader := true
		if s.kv != nil {
			s.kv.publish(ctx, v.p.id, d)
			leader = s.kv.lead(ctx, v.p.id)
			if others, ok := s.kv.others(ctx, v.p.id); ok {
				d = d.merge(others)
			} else if leader {
				continue // cannot see the other routers' demand: decide nothing
			}
		}
		s.mu.Lock()
		if p := s.pools[v.p.id]; p != nil {
			if p.leader != leader {
				s.log.Info("pool decisions", "pool", p.id, "leader", leader)
			}
			p.leader = leader
			s.m.leader.WithLabelValues(p.id).Set(b2f(leader))
		}
		s.mu.Unlock()
		if !leader {
			continue
		}
		if _, _, ok := s.readCount(ctx, v.p.id); !ok {
			continue
		}
		s.mu.Lock()
		p := s.pools[v.p.id]
		if p == nil {
			s.mu.Unlock()
			continue
		}
		target, reason, msg := s.decide(p, d, v.ready, v.slots, now)
		s.mu.Unlock()
		if reason != "" {
			s.scale(p.id, target, false, reason, fmt.Sprintf("llorch router %s: %s", s.cfg.RouterID, msg))
		}
	}
}

// decide is one pool's decision (s.mu held); reason "" means no change.
func (s *Scaler) decide(p *pool, d demand, ready, slots int, now time.Time) (int, string, string) {
	switch {
	case p.desired < p.min:
		return p.min, "min", fmt.Sprintf("pool %s below its minimum %d", p.id, p.min)
	case p.desired == 0 && (d.Queued > 0 || d.InFlight > 0):
		return 1, "wake", fmt.Sprintf("requests for %q wait and pool %s is at 0", p.model, p.id)
	}
	busy := slots > 0 && float64(d.InFlight) >= s.cfg.TargetBusy*float64(slots)
	queueing := d.Queued > 0 && ready > 0 && ready >= p.desired
	if busy || queueing {
		if p.pressure.IsZero() {
			p.pressure = now
		}
		if now.Sub(p.pressure) >= s.cfg.Sustain && p.desired < p.max && now.Sub(p.lastUp) >= s.cfg.UpCooldown {
			reason := "busy"
			if queueing {
				reason = "queueing"
			}
			p.pressure = time.Time{}
			return p.desired + 1, reason, fmt.Sprintf("%d queued, %d of %d slots busy for %s on pool %s", d.Queued, d.InFlight, slots, s.cfg.Sustain, p.id)
		}
		return p.desired, "", ""
	}
	p.pressure = time.Time{}
	last := p.seen
	if l := d.last(); l.After(last) {
		last = l
	}
	// Other routers publish their demand once per tick: their last request
	// may be up to a tick newer than what this one read, so idle counts
	// two ticks more when demand is shared.
	var slack time.Duration
	if s.kv != nil {
		slack = 2 * s.cfg.Interval
	}
	if p.desired > p.min && d.InFlight == 0 && d.Queued == 0 && now.Sub(last) >= p.idle+slack && now.Sub(p.lastChange) >= s.cfg.DownCooldown {
		return p.min, "idle", fmt.Sprintf("no requests for %q for %s", p.model, p.idle)
	}
	return p.desired, "", ""
}
