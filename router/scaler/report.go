package scaler

import (
	"sort"
	"time"

	"github.com/llorch/llorch/router"
)

// Models implements router.DemandReporter.
func (s *Scaler) Models() []router.ModelState {
	var out []router.ModelState
	for _, p := range s.Pools() {
		out = append(out, router.ModelState{Model: p.Model, State: p.State})
	}
	return out
}

// Pools implements router.DemandReporter.
func (s *Scaler) Pools() []router.PoolState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]router.PoolState, 0, len(s.pools))
	for _, p := range s.pools {
		_, ready, _ := s.cfg.Load.ModelLoad(p.model)
		st := "stopped"
		switch {
		case ready > 0:
			st = "loaded"
		case p.desired > 0 || p.waking:
			st = "loading"
		}
		ps := router.PoolState{Pool: p.id, Model: p.model, State: st, Desired: p.desired, Min: p.min, Max: p.max, Leader: p.leader, LastAction: p.lastAction}
		if !p.lastAt.IsZero() {
			ps.LastAt = p.lastAt.UTC().Format(time.RFC3339)
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Pool < out[b].Pool })
	return out
}
