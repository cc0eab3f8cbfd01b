package router

import (
	"errors"
	"sort"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/scheduler"
)

// Demand brings capacity for models that have none ready: the cloud
// scaler (router/scaler, which asks Nomad to scale a pool) or the home
// profile's on-demand loader. The router tells it about every request and
// asks it to wake a model no ready instance serves; while it wakes, the
// request waits in the model's admission queue (bounded by the queue
// timeout) and is placed as soon as an instance turns up.
type Demand interface {
	// Wake is called when a request finds no ready instance of model. It
	// must not block; true means capacity is on its way (the request
	// waits), false that nothing here can serve the model.
	Wake(model string) bool
	// Begin and End bracket each request for model (idle timers, LRU,
	// in-flight counts); End is called once for every Begin.
	Begin(model string)
	End(model string)
}

// ModelState is a model Demand knows about and whether it runs.
type ModelState struct {
	Model string `json:"model"`
	// State is loaded (an instance is ready), loading (waking) or stopped.
	State string `json:"state"`
}

// PoolState is what /v2/nodes and /ui show about a pool Demand manages.
type PoolState struct {
	Pool    string `json:"pool"`
	Model   string `json:"model"`
	State   string `json:"state"` // loaded, loading, stopped
	Desired int    `json:"desired"`
	Min     int    `json:"min"`
	Max     int    `json:"max"`
	// Leader: this router decides for the pool (cloud; always true at home).
	Leader     bool   `json:"leader"`
	LastAction string `json:"last_action,omitempty"` // e.g. "scaled 0→1 (wake)"
	LastAt     string `json:"last_at,omitempty"`     // RFC 3339
	MemoryMiB  int    `json:"memory_mib,omitempty"`  // home: the budget share it takes
	Pinned     bool   `json:"pinned,omitempty"`
}

// DemandReporter is implemented by a Demand that can list its models and
// pools (both Demands here do): /v1/models then lists every model it
// knows with its state, and /v2/nodes and /ui show its pools.
type DemandReporter interface {
	Models() []ModelState
	Pools() []PoolState
}

// SetDemand plugs a Demand in; call it before serving.
func (rt *Router) SetDemand(d Demand) { rt.demand = d }

// ModelLoad is the router's view of a model for a scaler: requests
// waiting in its queue, ready instances and their slots.
func (rt *Router) ModelLoad(model string) (queued, ready, slots int) {
	i, b := rt.queues.Depth(model)
	for _, in := range rt.view.Current().Instances {
		if in.Model == model && ready4(in) {
			ready++
			slots += max(in.Slots, 1)
		}
	}
	return i + b, ready, slots
}

// InstanceInFlight is the router's requests in flight to an instance
// (attempts that have not ended), for an owner that drains it before a stop.
func (rt *Router) InstanceInFlight(id string) int { return rt.state.InFlight(id) }

func ready4(in registry.Instance) bool {
	return !in.Draining && (in.Health == "" || in.Health == registry.HealthPassing)
}

// wakeable reports whether a placement error means "no ready instance"
// (none registered, or none passing) rather than "all busy" or bad input.
func (rt *Router) wakeable(model string, err error) bool {
	if rt.demand == nil || err == nil {
		return false
	}
	if _, ready, _ := rt.ModelLoad(model); ready > 0 {
		return false // it runs: the error is about busy slots or filters
	}
	var nc *NoCapacityError
	if errors.As(err, &nc) {
		return !nc.Saturated
	}
	var se *scheduler.Error
	if errors.As(err, &se) {
		return se.Code == scheduler.CodeModelNotAvailable || se.Code == scheduler.CodePoolUnavailable
	}
	return errors.Is(err, ErrModelNotAvailable)
}

// drainWoken wakes the waiters of every model that had no ready instance
// in the previous snapshot and has one now, so a queue that waited for a
// cold model drains as soon as its engine is announced rather than at the
// next recheck. (Models that stayed ready are left to the usual one
// wake-up per finished request: waking a whole queue reorders it.) It runs
// on the discovery goroutine only.
func (rt *Router) drainWoken(snap *registry.Snapshot) {
	if rt.demand == nil {
		return
	}
	now := map[string]bool{}
	for _, in := range snap.Instances {
		if ready4(in) {
			now[in.Model] = true
		}
	}
	for m := range now {
		if rt.readyBefore[m] {
			continue
		}
		i, b := rt.queues.Depth(m)
		for n := 0; n < i+b; n++ {
			rt.queues.Notify(m)
		}
	}
	rt.readyBefore = now
}

// demandModels merges Demand's models into the available list for
// /v1/models: every model it knows, with its state.
func (rt *Router) demandModels(avail []string) []modelObject {
	out := make([]modelObject, 0, len(avail))
	known := map[string]int{}
	for _, m := range avail {
		known[m] = len(out)
		out = append(out, modelObject{ID: m, Object: "model", OwnedBy: "llorch"})
	}
	rep, ok := rt.demand.(DemandReporter)
	if !ok {
		return out
	}
	for _, ms := range rep.Models() {
		if i, ok := known[ms.Model]; ok {
			if out[i].State == "" || ms.State == "loaded" {
				out[i].State = ms.State
			}
			continue
		}
		known[ms.Model] = len(out)
		out = append(out, modelObject{ID: ms.Model, Object: "model", OwnedBy: "llorch", State: ms.State})
	}
	for i := range out {
		if out[i].State == "" {
			out[i].State = "loaded" // ready instances, not managed by Demand
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// demandPools is Demand's pools for /v2/nodes and /ui (nil without one).
func (rt *Router) demandPools() []PoolState {
	if rep, ok := rt.demand.(DemandReporter); ok {
		return rep.Pools()
	}
	return nil
}
