// Package scheduler decides where a request goes: a pure, deterministic
// Decide(request, snapshot index, load) built from Filter, Scorer and Picker
// plugins assembled into a profile, in the shape of the Gateway API
// inference extension's endpoint picker. It does no I/O: the router supplies
// the snapshot and the live load, and owns the mutable affinity state
// (PrefixTable) that it updates after each decision with Observe.
package scheduler

import (
	"fmt"
	"strings"
	"sync"

	"github.com/llorch/llorch/registry"
)

// Placement is the request's placement constraints (the /v2 TaskRequest's
// placement block; OpenAI requests leave it zero).
type Placement struct {
	// PinNode / PinPool: strict; an unknown or unready pin is an error,
	// never a silent fallback.
	PinNode string
	PinPool string
	// PreferPools are tried first; AvoidPools are left out. Either falls
	// back to the rest only when AllowFallback is set.
	PreferPools   []string
	AvoidPools    []string
	AllowFallback bool
	// RequireGPUs: the instance's GPUs must include all of these UUIDs.
	RequireGPUs []string
}

// Request is what placement knows about one request.
type Request struct {
	Model string
	Path  string // OpenAI path the request needs, "" = any
	// CtxNeeded is the context the request needs (prompt + max tokens), 0 = unknown.
	CtxNeeded int
	// SessionKey (X-Session-Id or the body's "user") keeps a session on one instance.
	SessionKey string
	// PrefixHashes are chained hashes of the prompt's leading blocks (see
	// PrefixHashes); requests sharing a prefix share leading hashes.
	PrefixHashes []uint64
	// AffinityKey names the conversation for prompt-cache affinity when
	// there is no session (see PromptKey): every router derives the same
	// key from the same conversation, so consistent hashing with bounded
	// load (the cache-affinity scorer) sends it to the same instance
	// without shared state.
	AffinityKey string
	Placement   Placement
	// SampleSeed picks which instances a decision over a large fleet
	// samples (see SampleAbove), together with the session key and the
	// first prefix block. The caller varies it per request (a counter, a
	// hash of the request id) so requests without a session or a shared
	// prompt spread over the fleet; Decide stays deterministic for a given
	// seed.
	SampleSeed uint64
	// Explain fills Decision.Reasons. Off by default: formatting reasons
	// costs more than the decision itself at small fleets.
	Explain bool
}

// Load is an instance's live load as the router sees it.
type Load struct {
	InFlight  int // router's own in-flight requests to it
	Queue     int // engine-reported waiting requests
	SlotsBusy int // engine-reported busy slots
	KVUsage   float64
	KVKnown   bool
	Ejected   bool
	// Reported: SlotsBusy, Queue and KV come from a fresh engine report
	// (plus the router's own requests started since).
	Reported bool
	// Stale: the engine reported before and has stopped: its load is
	// unknown. Scorers rank it last rather than taking it for idle.
	Stale bool
}

// LoadView gives the live load of an instance id.
type LoadView interface {
	Load(id string) Load
}

// Candidate is an instance with its load, as filters and scorers see it.
type Candidate struct {
	Inst *registry.Instance
	Load Load

	pos int32 // place in the model's sorted list: orders ties like registry.Less
	// sessionRank is 1 + the place among the session's ring successors
	// (1 = the session's home), 0 when not one.
	sessionRank int16
	// prefixBlocks is how many leading prompt blocks were last sent here.
	prefixBlocks int16
	// affinityRank is 1 + the place among the affinity key's ring
	// successors, 0 when not one.
	affinityRank int16
}

// busy is the candidate's load figure: the larger of the router's
// in-flight count and the engine's busy slots (they overlap), plus the
// engine's queue.
func (c *Candidate) busy() int { return max(c.Load.InFlight, c.Load.SlotsBusy) + c.Load.Queue }

// Decision is the outcome of Decide.
type Decision struct {
	// Ranked is the best feasible instances (at most MaxRanked) in the
	// order to try them; the first is the choice. Empty when Err is set or
	// Saturated.
	Ranked []registry.Instance
	// Saturated: feasible instances exist but none has a free slot; the
	// caller queues the request (admission) rather than failing it.
	Saturated bool
	Err       *Error
	// Reasons explain the decision (only with Request.Explain): what each
	// filter removed, the winner's score parts.
	Reasons []string
	// Considered is how many instances of the model were looked at.
	Considered int
}

// Chosen is the first ranked instance.
func (d Decision) Chosen() (registry.Instance, bool) {
	if len(d.Ranked) == 0 {
		return registry.Instance{}, false
	}
	return d.Ranked[0], true
}

// Scheduler runs a profile. It holds no per-request state: Decide may run
// concurrently.
type Scheduler struct {
	profile Profile
	prefix  *PrefixTable // the prefix scorer's table, read to find each request's prefix holders
}

// New makes a scheduler from a profile.
func New(p Profile) *Scheduler {
	s := &Scheduler{profile: p}
	for _, ws := range p.Scorers {
		if pa, ok := ws.Scorer.(prefixAffinity); ok {
			s.prefix = pa.table
		}
	}
	return s
}

// SampleAbove is the candidate count past which a decision looks at a
// subset: the session's ring successors, the instances holding the
// prompt's prefix, and SampleSize others evenly strided from a seeded
// start (power-of-k choices, as load balancers at this scale do). Every
// subset member still passes every filter, so a filtered instance is never
// chosen; and a subset in which nothing passes is not taken as the fleet's
// answer: Decide then looks at every instance before reporting an error
// or Saturated.
const (
	SampleAbove = 256
	SampleSize  = 32
)

// MaxRanked is how many instances a decision ranks: the router tries at
// most a few (1 + retries); ordering thousands would be wasted work.
const MaxRanked = 8

// Decide places req. It is deterministic: the same request, index, load and
// affinity state give the same decision.
func (s *Scheduler) Decide(req Request, ix *Index, load LoadView) Decision {
	mi := ix.models[req.Model]
	if mi == nil {
		return Decision{Err: errorf(CodeModelNotAvailable, 404, false, "no instance serves model %q", req.Model)}
	}
	sc := getScratch(len(mi.list))
	defer func() {
		sc.req = Request{} // drop the caller's slices before pooling
		scratchPool.Put(sc)
	}()
	// The plugins take the request by pointer; pointing into the pooled
	// scratch keeps it from escaping to a fresh heap copy per decision.
	sc.req = req
	pinned := req.Placement.PinNode != "" || req.Placement.PinPool != ""
	if len(mi.list) > SampleAbove && !pinned {
		d := s.decide(&sc.req, ix, mi, load, sc, true)
		if d.Err == nil && !d.Saturated {
			return d
		}
	}
	return s.decide(&sc.req, ix, mi, load, sc, false)
}

// decide runs the profile over the model's instances, or over a sample.
func (s *Scheduler) decide(req *Request, ix *Index, mi *modelIndex, load LoadView, sc *scratch, sample bool) Decision {
	cands := s.gather(req, ix, mi, load, sc, sample)
	d := Decision{Considered: len(cands)}
	for _, f := range s.profile.Filters {
		before := len(cands)
		kept, err := f.Filter(req, cands)
		if err != nil {
			d.Err = err
			if req.Explain {
				d.Reasons = append(d.Reasons, fmt.Sprintf("%s: %s", f.Name(), err.Message))
			}
			return d
		}
		if n := before - len(kept); n > 0 && req.Explain {
			d.Reasons = append(d.Reasons, fmt.Sprintf("%s removed %d", f.Name(), n))
		}
		if len(kept) == 0 {
			if f.Name() == FilterCapacity {
				d.Saturated = true
				return d
			}
			d.Err = emptyAfter(f.Name(), *req)
			return d
		}
		cands = kept
	}
	s.rank(req, cands, sc, &d)
	return d
}

// gather lists the candidates with their load and affinity: the session's
// ring successors first (so the session scorer finds the home without a
// search), then the prefix holders, then every other instance of the model
// or a strided sample of them.
func (s *Scheduler) gather(req *Request, ix *Index, mi *modelIndex, load LoadView, sc *scratch, sample bool) []Candidate {
	sc.cands = sc.cands[:0]
	add := func(pos int32) *Candidate {
		if k := sc.slot[pos]; k != 0 {
			return &sc.cands[k-1]
		}
		in := mi.list[pos]
		sc.cands = append(sc.cands, Candidate{Inst: in, Load: load.Load(in.ID), pos: pos})
		sc.slot[pos] = int32(len(sc.cands))
		return &sc.cands[len(sc.cands)-1]
	}
	sc.ring = mi.sessionSuccessors(req.SessionKey, sc.ring[:0])
	for k, pos := range sc.ring {
		add(pos).sessionRank = int16(k + 1)
	}
	if req.AffinityKey != "" {
		sc.ring = mi.sessionSuccessors(req.AffinityKey, sc.ring[:0])
		for k, pos := range sc.ring {
			add(pos).affinityRank = int16(k + 1)
		}
	}
	if s.prefix != nil && len(req.PrefixHashes) > 0 {
		sc.owners = s.prefix.ownersInto(sc.owners[:0], req.PrefixHashes)
		var last string
		var lastPos int32 = -1
		for j, id := range sc.owners {
			if id == "" {
				continue
			}
			if id != last {
				last, lastPos = id, -1
				if e, ok := ix.byID[id]; ok && e.model == mi {
					lastPos = e.pos
				}
			}
			if lastPos >= 0 {
				add(lastPos).prefixBlocks = int16(j + 1)
			}
		}
	}
	n := len(mi.list)
	if !sample {
		for pos := range n {
			add(int32(pos))
		}
	} else {
		seed := hrw(req.SessionKey, req.Model) ^ req.SampleSeed
		if len(req.PrefixHashes) > 0 {
			seed ^= req.PrefixHashes[0]
		}
		start, stride := int(seed%uint64(n)), n/SampleSize
		for k := range SampleSize {
			add(int32((start + k*stride) % n))
		}
	}
	for _, c := range sc.cands {
		sc.slot[c.pos] = 0
	}
	return sc.cands
}

func emptyAfter(filter string, req Request) *Error {
	switch filter {
	case FilterPath:
		return errorf(CodeModelNotAvailable, 404, false, "no instance serves model %q on %s", req.Model, req.Path)
	case FilterContext:
		return errorf(CodeInvalidParams, 400, false, "no instance of model %q has a context of %d tokens", req.Model, req.CtxNeeded)
	}
	return errorf(CodePoolUnavailable, 503, true, "no instance of model %q passes filter %s", req.Model, filter)
}

type scored struct {
	c     *Candidate
	score float64
}

func (s *Scheduler) rank(req *Request, cands []Candidate, sc *scratch, d *Decision) {
	sc.scored = sc.scored[:0]
	for i := range cands {
		sc.scored = append(sc.scored, scored{c: &cands[i]})
	}
	vals := grow(sc.vals, len(cands))
	sc.vals = vals
	for _, ws := range s.profile.Scorers {
		clear(vals)
		ws.Scorer.Score(req, cands, vals)
		for i := range sc.scored {
			sc.scored[i].score += ws.Weight * vals[i]
		}
	}
	sc.top = s.profile.Picker.Pick(sc.scored, sc.top[:0], MaxRanked)
	d.Ranked = make([]registry.Instance, len(sc.top))
	for i, x := range sc.top {
		d.Ranked[i] = *x.c.Inst
	}
	if req.Explain {
		parts := make([]string, 0, len(s.profile.Scorers))
		for _, ws := range s.profile.Scorers {
			parts = append(parts, fmt.Sprintf("%s×%g", ws.Scorer.Name(), ws.Weight))
		}
		d.Reasons = append(d.Reasons, fmt.Sprintf("chose %s on %s (score %.3f from %s)", d.Ranked[0].ID, d.Ranked[0].NodeID, sc.top[0].score, strings.Join(parts, "+")))
	}
}

// scratch is one decision's working memory, pooled so a decision does not
// allocate (garbage collection is what sets the tail at large fleets).
type scratch struct {
	req    Request
	slot   []int32 // per model position: 1 + index in cands while gathering, else 0
	cands  []Candidate
	vals   []float64
	scored []scored
	top    []scored
	owners []string
	ring   []int32
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch(n int) *scratch {
	sc := scratchPool.Get().(*scratch)
	if len(sc.slot) < n {
		sc.slot = make([]int32, n)
	}
	return sc
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
