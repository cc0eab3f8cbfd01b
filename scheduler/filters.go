package scheduler

import (
	"slices"

	"github.com/llorch/llorch/registry"
)

// Filter names, as profiles list them.
const (
	FilterPin      = "pin"
	FilterHealthy  = "healthy"
	FilterPath     = "path"
	FilterContext  = "context"
	FilterDevice   = "device"
	FilterEjected  = "not-ejected"
	FilterPools    = "pools"
	FilterCapacity = "capacity"
)

// Filter removes candidates that cannot take the request. A filter that
// must refuse the request outright (a strict pin) returns an error.
type Filter interface {
	Name() string
	Filter(req *Request, in []Candidate) ([]Candidate, *Error)
}

type filterFunc struct {
	name string
	keep func(*Request, *Candidate) bool
}

func (f filterFunc) Name() string { return f.name }

// Filter keeps the survivors in in's own backing array: Decide owns the
// slice, and not allocating per filter matters at thousands of candidates.
func (f filterFunc) Filter(req *Request, in []Candidate) ([]Candidate, *Error) {
	out := in[:0]
	for i := range in {
		if !f.keep(req, &in[i]) {
			continue
		}
		// Most candidates pass most filters: move one only once an
		// earlier one was dropped (each move is a pointer write the
		// garbage collector may have to see).
		if len(out) != i {
			out = append(out, in[i])
		} else {
			out = out[:i+1]
		}
	}
	return out, nil
}

func ready(c *Candidate) bool {
	return (c.Inst.Health == registry.HealthPassing || c.Inst.Health == "") && !c.Inst.Draining
}

var (
	healthyFilter = filterFunc{FilterHealthy, func(_ *Request, c *Candidate) bool { return ready(c) }}
	pathFilter    = filterFunc{FilterPath, func(r *Request, c *Candidate) bool { return r.Path == "" || c.Inst.Serves(r.Path) }}
	contextFilter = filterFunc{FilterContext, func(r *Request, c *Candidate) bool {
		return r.CtxNeeded == 0 || c.Inst.Ctx == 0 || c.Inst.Ctx >= r.CtxNeeded
	}}
	deviceFilter = filterFunc{FilterDevice, func(r *Request, c *Candidate) bool {
		for _, g := range r.Placement.RequireGPUs {
			if !slices.Contains(c.Inst.GPUs, g) {
				return false
			}
		}
		return true
	}}
	ejectedFilter  = filterFunc{FilterEjected, func(_ *Request, c *Candidate) bool { return !c.Load.Ejected }}
	capacityFilter = filterFunc{FilterCapacity, func(_ *Request, c *Candidate) bool {
		// Slots 0 means the engine did not say: no limit we can apply.
		return c.Inst.Slots == 0 || c.busy() < c.Inst.Slots
	}}
)

// pinFilter is strict: a pin to something that does not exist or is not
// ready fails the request; it never falls back to another instance.
type pinFilter struct{}

func (pinFilter) Name() string { return FilterPin }
func (pinFilter) Filter(req *Request, in []Candidate) ([]Candidate, *Error) {
	p := req.Placement
	if p.PinNode == "" && p.PinPool == "" {
		return in, nil
	}
	var matched, readyOnes []Candidate
	for i := range in {
		c := &in[i]
		if (p.PinNode == "" || c.Inst.NodeID == p.PinNode) && (p.PinPool == "" || c.Inst.PoolID == p.PinPool) {
			matched = append(matched, *c)
			if ready(c) {
				readyOnes = append(readyOnes, *c)
			}
		}
	}
	switch {
	case len(matched) == 0 && p.PinNode != "":
		return nil, errorf(CodeNodeUnavailable, 503, false, "pinned node %q serves no instance of model %q", p.PinNode, req.Model)
	case len(matched) == 0:
		return nil, errorf(CodeInvalidParams, 400, false, "pinned pool %q has no instance of model %q", p.PinPool, req.Model)
	case len(readyOnes) == 0:
		return nil, errorf(CodePoolUnready, 503, true, "pinned %s is not ready (unhealthy or draining)", pinName(p))
	}
	return readyOnes, nil
}

func pinName(p Placement) string {
	if p.PinNode != "" {
		return "node " + p.PinNode
	}
	return "pool " + p.PinPool
}

// poolsFilter applies prefer and avoid lists: prefer narrows to the
// preferred pools when any is feasible, else keeps all only with
// AllowFallback; avoid drops the avoided pools unless that leaves none and
// AllowFallback is set.
type poolsFilter struct{}

func (poolsFilter) Name() string { return FilterPools }
func (poolsFilter) Filter(req *Request, in []Candidate) ([]Candidate, *Error) {
	p := req.Placement
	out := in
	if len(p.AvoidPools) > 0 {
		var kept []Candidate
		for _, c := range out {
			if !slices.Contains(p.AvoidPools, c.Inst.PoolID) {
				kept = append(kept, c)
			}
		}
		if len(kept) > 0 || !p.AllowFallback {
			out = kept
		}
	}
	if len(p.PreferPools) > 0 {
		var kept []Candidate
		for _, c := range out {
			if slices.Contains(p.PreferPools, c.Inst.PoolID) {
				kept = append(kept, c)
			}
		}
		if len(kept) > 0 || !p.AllowFallback {
			out = kept
		}
	}
	return out, nil
}
