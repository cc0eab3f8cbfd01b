package router

import (
	"sync/atomic"
	"time"

	"github.com/llorch/llorch/registry"
)

// RoundRobin rotates over the model's available instances, blind to load
// and to prompts: what an nginx upstream block does. It is the baseline
// the placement benchmark compares against, and a fallback profile.
type RoundRobin struct{ next atomic.Uint64 }

// Place implements Placer: LeastInFlight's candidates and errors, the
// order rotated by one per request instead of sorted by load.
func (p *RoundRobin) Place(req PlaceRequest, snap registry.Snapshot) ([]registry.Instance, error) {
	// LeastInFlight without local state gives the available instances in
	// snapshot order.
	local := req.Local
	req.Local = ejectedOnly{local}
	cands, err := LeastInFlight{}.Place(req, snap)
	if err != nil || len(cands) < 2 {
		return cands, err
	}
	k := int(p.next.Add(1)-1) % len(cands)
	return append(cands[k:], cands[:k]...), nil
}

// ejectedOnly hides in-flight counts so LeastInFlight keeps snapshot order.
type ejectedOnly struct{ l LocalState }

func (e ejectedOnly) InFlight(string) int { return 0 }
func (e ejectedOnly) EjectedFor(id string) time.Duration {
	if e.l == nil {
		return 0
	}
	return e.l.EjectedFor(id)
}
