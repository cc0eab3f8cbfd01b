// Package scheduler decides where a request goes: a pure, deterministic
// Decide(request, snapshot index, load) built from Filter, Scorer and Picker
// plugins assembled into a profile, in the shape of the Gateway API
// inference extension's endpoint picker. It does no I/O: the router supplies
// the snapshot and the live load, and owns the mutable affinity state
// (PrefixTable) that it updates after each decision with Observe.
package scheduler

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/llorch/llorch/instance"
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
	Placement    Placement

	// sessionOrder is the session key's ring successors (instance ids),
	// filled by Decide for the session scorer.
	sessionOrder []string
}

// Load is an instance's live load as the router sees it.
type Load struct {
	InFlight  int // router's own in-flight requests to it
	Queue     int // engine-reported waiting requests
	SlotsBusy int // engine-reported busy slots
	KVUsage   float64
	KVKnown   bool
	Ejected   bool
}

// LoadView gives the live load of an instance id.
type LoadView interface {
	Load(id string) Load
}

// Candidate is an instance with its load, as filters and scorers see it.
type Candidate struct {
	Inst *instance.Instance
	Load Load
}

// busy is the candidate's load figure: the larger of the router's
// in-flight count and the engine's busy slots (they overlap), plus the
// engine's queue.
func (c Candidate) busy() int { return max(c.Load.InFlight, c.Load.SlotsBusy) + c.Load.Queue }

// Decision is the outcome of Decide.
type Decision struct {
	// Ranked is every feasible instance in the order to try them; the first
	// is the choice. Empty when Err is set or Saturated.
	Ranked []instance.Instance
	// Saturated: feasible instances exist but none has a free slot; the
	// caller queues the request (admission) rather than failing it.
	Saturated bool
	Err       *Error
	// Reasons explain the decision: what each filter removed, the winner's
	// score parts.
	Reasons []string
	// Considered is how many instances of the model were looked at.
	Considered int
}

// Chosen is the first ranked instance.
func (d Decision) Chosen() (instance.Instance, bool) {
	if len(d.Ranked) == 0 {
		return instance.Instance{}, false
	}
	return d.Ranked[0], true
}

// Index is a snapshot pre-indexed by model, built once per snapshot so a
// decision touches only the model's instances, with each model's
// consistent-hash ring for session affinity.
type Index struct {
	byModel map[string][]*instance.Instance
	byID    map[string]*instance.Instance
	rings   map[string][]ringPoint
	Snap    registry.Snapshot
}

type ringPoint struct {
	hash uint64
	id   string
}

// ringVNodes spreads each instance over the ring so the sessions of a
// departing instance spread over many others rather than one.
const ringVNodes = 8

// NewIndex indexes a snapshot (its instances are already sorted by
// instance.Sort; the order is kept).
func NewIndex(snap registry.Snapshot) *Index {
	ix := &Index{byModel: map[string][]*instance.Instance{}, byID: map[string]*instance.Instance{}, rings: map[string][]ringPoint{}, Snap: snap}
	for i := range snap.Instances {
		in := &snap.Instances[i]
		ix.byModel[in.Model] = append(ix.byModel[in.Model], in)
		ix.byID[in.ID] = in
	}
	for m, l := range ix.byModel {
		sort.SliceStable(l, func(a, b int) bool { return instance.Less(*l[a], *l[b]) })
		ring := make([]ringPoint, 0, len(l)*ringVNodes)
		for _, in := range l {
			for v := 0; v < ringVNodes; v++ {
				ring = append(ring, ringPoint{hrw(in.ID, string(rune('a'+v))), in.ID})
			}
		}
		sort.Slice(ring, func(a, b int) bool {
			if ring[a].hash != ring[b].hash {
				return ring[a].hash < ring[b].hash
			}
			return ring[a].id < ring[b].id
		})
		ix.rings[m] = ring
	}
	return ix
}

// sessionFallbacks is how far along the ring a session looks for an
// instance that can take it before giving up on affinity for the request.
const sessionFallbacks = 16

// sessionSuccessors lists up to n distinct instances following the key on
// the model's ring: the session's home first, then where it goes if the
// home cannot take it.
func (ix *Index) sessionSuccessors(model, key string, n int) []string {
	ring := ix.rings[model]
	if key == "" || len(ring) == 0 {
		return nil
	}
	h := hrw(key, "")
	i := sort.Search(len(ring), func(i int) bool { return ring[i].hash >= h })
	var out []string
	for k := 0; k < len(ring) && len(out) < n; k++ {
		id := ring[(i+k)%len(ring)].id
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// SampleAbove is the candidate count past which a decision looks at a
// subset: the session's ring successors, the instances holding the
// prompt's prefix, and an evenly strided sample of SampleSize others
// (power-of-k choices, as load balancers at this scale do). Every subset
// member still passes every filter, so a filtered instance is never chosen.
const (
	SampleAbove = 256
	SampleSize  = 128
)

func (ix *Index) subset(req Request, table *PrefixTable) []*instance.Instance {
	all := ix.byModel[req.Model]
	seen := make(map[string]bool, SampleSize+16)
	out := make([]*instance.Instance, 0, SampleSize+16)
	add := func(in *instance.Instance) {
		if in != nil && in.Model == req.Model && !seen[in.ID] {
			seen[in.ID] = true
			out = append(out, in)
		}
	}
	for _, id := range req.sessionOrder {
		add(ix.byID[id])
	}
	if table != nil {
		for _, id := range table.owners(req.PrefixHashes) {
			if id != "" {
				add(ix.byID[id])
			}
		}
	}
	start := int(hrw(req.SessionKey, req.Model) % uint64(len(all)))
	stride := len(all) / SampleSize
	for k := 0; k < SampleSize; k++ {
		add(all[(start+k*stride)%len(all)])
	}
	return out
}

// Models lists the indexed model names, sorted.
func (ix *Index) Models() []string {
	out := make([]string, 0, len(ix.byModel))
	for m := range ix.byModel {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Instances of a model.
func (ix *Index) Instances(model string) []*instance.Instance { return ix.byModel[model] }

// Scheduler runs a profile.
type Scheduler struct {
	profile Profile
	prefix  *PrefixTable // the prefix scorer's table, for subset sampling
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

// Decide places req. It is deterministic: the same request, index, load and
// affinity state give the same decision.
func (s *Scheduler) Decide(req Request, ix *Index, load LoadView) Decision {
	all := ix.Instances(req.Model)
	d := Decision{Considered: len(all)}
	if len(all) == 0 {
		d.Err = errorf(CodeModelNotAvailable, 404, false, "no instance serves model %q", req.Model)
		return d
	}
	req.sessionOrder = ix.sessionSuccessors(req.Model, req.SessionKey, sessionFallbacks)
	pinned := req.Placement.PinNode != "" || req.Placement.PinPool != ""
	if len(all) > SampleAbove && !pinned {
		all = ix.subset(req, s.prefix)
		d.Considered = len(all)
	}
	cands := make([]Candidate, 0, len(all))
	for _, in := range all {
		cands = append(cands, Candidate{Inst: in, Load: load.Load(in.ID)})
	}
	for _, f := range s.profile.Filters {
		before := len(cands)
		kept, err := f.Filter(req, cands)
		if err != nil {
			d.Err = err
			d.Reasons = append(d.Reasons, fmt.Sprintf("%s: %s", f.Name(), err.Message))
			return d
		}
		if n := before - len(kept); n > 0 {
			d.Reasons = append(d.Reasons, fmt.Sprintf("%s removed %d", f.Name(), n))
		}
		if len(kept) == 0 {
			if f.Name() == FilterCapacity {
				d.Saturated = true
				return d
			}
			d.Err = emptyAfter(f.Name(), req)
			return d
		}
		cands = kept
	}
	d.Ranked = s.rank(req, cands, &d)
	return d
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
	c     Candidate
	score float64
}

// MaxRanked is how many instances a decision ranks: the router tries at
// most a few (1 + retries); ordering thousands would be wasted work.
const MaxRanked = 8

func (s *Scheduler) rank(req Request, cands []Candidate, d *Decision) []instance.Instance {
	ss := make([]scored, len(cands))
	vals := make([]float64, len(cands))
	for i, c := range cands {
		ss[i].c = c
	}
	parts := make([]string, 0, len(s.profile.Scorers))
	for _, ws := range s.profile.Scorers {
		clear(vals)
		ws.Scorer.Score(req, cands, vals)
		for i := range ss {
			ss[i].score += ws.Weight * vals[i]
		}
		parts = append(parts, ws.Scorer.Name())
	}
	ss = s.profile.Picker.Pick(ss, MaxRanked)
	out := make([]instance.Instance, len(ss))
	for i, x := range ss {
		out[i] = *x.c.Inst
	}
	d.Reasons = append(d.Reasons, fmt.Sprintf("chose %s on %s (score %.3f from %s)", out[0].ID, out[0].NodeID, ss[0].score, strings.Join(parts, "+")))
	return out
}
