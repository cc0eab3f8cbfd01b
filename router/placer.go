package router

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/scheduler"
)

// PlaceRequest is what placement knows about a request.
type PlaceRequest struct {
	Model  string // the body's "model"
	Path   string // the OpenAI path, e.g. /v1/chat/completions
	User   string // the body's "user", for placers that keep a user on one instance
	Stream bool
	// BodyBytes is the request body's size, a cheap hint of prompt length.
	BodyBytes int
	// Local is the router's own view of each instance: its in-flight
	// requests and passive ejections. Never nil when the router calls.
	Local LocalState
	// Session is X-Session-Id (placers fall back to User).
	Session string
	// Prefix is the start of the prompt, for prefix affinity.
	Prefix []byte
	// Placement carries /v2 placement constraints (pin, prefer, avoid).
	Placement scheduler.Placement
}

// LocalState is the router's per-instance view that the registry lacks.
type LocalState interface {
	InFlight(id string) int
	// EjectedFor is how much longer the instance is ejected; 0 if it is not.
	EjectedFor(id string) time.Duration
}

// Placer chooses where a request goes. It returns candidates in the order to
// try them (the router tries the first 1+retries) or an error wrapping
// ErrModelNotAvailable or *NoCapacityError. The scheduler plugs in here.
type Placer interface {
	Place(req PlaceRequest, snap registry.Snapshot) ([]registry.Instance, error)
}

// ErrModelNotAvailable: no instance in the snapshot serves the model on the
// requested path.
var ErrModelNotAvailable = errors.New("model not available")

// NoCapacityError: the model has instances, but none can take a request now
// (all ejected, draining or unhealthy). RetryAfter says when one may.
type NoCapacityError struct {
	Model      string
	RetryAfter time.Duration
	// Saturated: instances are healthy but every slot is busy (admission
	// may queue the request) rather than all ejected or unhealthy.
	Saturated bool
}

func (e *NoCapacityError) Error() string {
	return fmt.Sprintf("model %q has no instance able to take requests now", e.Model)
}

// LeastInFlight is the default placer: the model's healthy, non-draining,
// non-ejected instances that serve the path, fewest in-flight requests
// first, ties broken by (node id, instance id).
type LeastInFlight struct{}

// Place implements Placer.
func (LeastInFlight) Place(req PlaceRequest, snap registry.Snapshot) ([]registry.Instance, error) {
	type cand struct {
		inst     registry.Instance
		inFlight int
	}
	var (
		cands       []cand
		haveModel   bool
		servesPath  bool
		soonestBack time.Duration
	)
	for _, in := range snap.Instances {
		if in.Model != req.Model {
			continue
		}
		haveModel = true
		if !in.Serves(req.Path) {
			continue
		}
		servesPath = true
		if in.Draining || (in.Health != "" && in.Health != registry.HealthPassing) {
			continue
		}
		if req.Local != nil {
			if d := req.Local.EjectedFor(in.ID); d > 0 {
				if soonestBack == 0 || d < soonestBack {
					soonestBack = d
				}
				continue
			}
		}
		n := 0
		if req.Local != nil {
			n = req.Local.InFlight(in.ID)
		}
		cands = append(cands, cand{in, n})
	}
	switch {
	case !haveModel:
		return nil, fmt.Errorf("model %q is not served by any instance: %w", req.Model, ErrModelNotAvailable)
	case !servesPath:
		return nil, fmt.Errorf("model %q is not served on %s by any instance: %w", req.Model, req.Path, ErrModelNotAvailable)
	case len(cands) == 0:
		if soonestBack == 0 {
			soonestBack = time.Second
		}
		return nil, &NoCapacityError{Model: req.Model, RetryAfter: soonestBack}
	}
	// The snapshot is sorted by (node id, instance id); a stable sort on
	// load keeps that order among equals.
	sort.SliceStable(cands, func(a, b int) bool { return cands[a].inFlight < cands[b].inFlight })
	out := make([]registry.Instance, len(cands))
	for i, c := range cands {
		out[i] = c.inst
	}
	return out, nil
}
