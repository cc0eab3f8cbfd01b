package router

import (
	"bytes"
	"net/http"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/enginestate"
	"github.com/llorch/llorch/scheduler"
)

// Placement's view of load joins two sources. The engines' own reports
// (router/enginestate) are the truth several routers share: busy slots and
// queue count every router's requests. The router's own in-flight count is
// exact and immediate; so an instance's load is the report's count of
// other routers' requests, in its slots or its queue
// (enginestate.Report.OthersHeld, which errs high), plus this router's
// requests now, wherever they wait. A slot this router frees it can
// reuse at once; a slot another router frees is seen at the second report
// that shows it (at most two poll intervals), by which time its owner has
// usually taken it again, so two routers rarely claim one slot from the
// same report. What remains: requests that reach two routers within one
// poll interval of each other, both seeing the same free slot (the
// capacity test measures this), and a burst at start-up before the
// reports count anyone's requests. Each report wakes the model's queue.

// newEnginePoller is the poller over the router's current snapshot, or
// nil when polling is off. Each report wakes the model's admission queue:
// a slot another router's request held may be free now, which this
// router's own completions would never signal.
func (rt *Router) newEnginePoller() *enginestate.Poller {
	if rt.cfg.EnginePoll <= 0 {
		return nil
	}
	p := enginestate.New(enginestate.Config{
		Interval:   rt.cfg.EnginePoll,
		StaleAfter: rt.cfg.EngineStaleAfter,
		Token:      rt.engineToken,
		Client:     &http.Client{Transport: rt.transport},
		Logger:     rt.log.Named("enginestate"),
		OnReport:   func(in registry.Instance, _ enginestate.Report) { rt.queues.Notify(in.Model) },
	}, func() []registry.Instance { return rt.view.Current().Instances }, rt.state)
	if sp, ok := rt.placer.(*SchedulerPlacer); ok {
		sp.engines = p
	}
	return p
}

// liveLoad is scheduler.LoadView over the router's local state and the
// engines' reports.
type liveLoad struct {
	l       LocalState
	engines *enginestate.Poller
	resv    *reservations // nil: none
}

// startedOf is the router's started count for id, when l keeps one.
func startedOf(l LocalState, id string) int64 {
	if sc, ok := l.(interface{ Started(string) int64 }); ok {
		return sc.Started(id)
	}
	return 0
}

func (v liveLoad) Load(id string) scheduler.Load {
	var out scheduler.Load
	if v.l != nil {
		out.InFlight, out.Ejected = v.l.InFlight(id), v.l.EjectedFor(id) > 0
		if v.resv != nil {
			out.InFlight += v.resv.pending(id, startedOf(v.l, id), time.Now())
		}
		if ls, ok := v.l.(*localState); ok {
			if ls.BusyFor(id) > 0 {
				// The engine said "not now" (429, 503 + Retry-After): full
				// until then, so the request goes elsewhere or queues.
				out.SlotsBusy = 1 << 20
				return out
			}
			out.InFlight += ls.slowStartExtra(id)
		}
	}
	if v.engines == nil {
		return out
	}
	s := v.engines.Get(id)
	switch s.Freshness {
	case enginestate.Fresh:
		l := s.Report.Load
		out.Reported = true
		// OthersHeld counts the engine's queue too (other routers'
		// requests waiting there), and InFlight this router's, wherever
		// they are: so the queue is not added again.
		out.SlotsBusy = s.Report.OthersHeld + out.InFlight
		out.KVUsage, out.KVKnown = l.KVCacheUsage, l.KVKnown
	case enginestate.Stale:
		out.Stale = true
	}
	return out
}

// promptShape is the request's affinity key and prefix hashes: from the
// body read canonically, or from a bare prompt (a /v2 task's).
func promptShape(prefix []byte) (string, []uint64) {
	if len(prefix) == 0 {
		return "", nil
	}
	if bytes.HasPrefix(bytes.TrimSpace(prefix), []byte("{")) {
		if k, h := scheduler.PromptKey(prefix); k != "" {
			return k, h
		}
	}
	if len(prefix) < scheduler.MinAffinityChars {
		return "", nil // TextKey's answer too, without copying the body
	}
	return scheduler.TextKey(string(prefix))
}

// liveView is an instance's engine-reported load as /v2/nodes and /ui show
// it. State is fresh, stale (reports stopped: load unknown) or unknown
// (never reported, or the engine reports no load).
type liveView struct {
	State        string   `json:"state"`
	SlotsBusy    int      `json:"slots_busy"`
	Queue        int      `json:"queue"`
	KVUsage      *float64 `json:"kv_usage,omitempty"`
	CacheHitRate *float64 `json:"cache_hit_rate,omitempty"` // prompt tokens served from the engine's cache, over this router's polling
	ReportAgeMs  int64    `json:"report_age_ms"`            // -1: no report yet
	Error        string   `json:"error,omitempty"`          // the last poll's error
}

func (rt *Router) liveView(id string) *liveView {
	if rt.engines == nil {
		return nil
	}
	s := rt.engines.Get(id)
	v := &liveView{State: s.Freshness.String(), ReportAgeMs: -1, Error: s.LastError}
	if s.Report.At.IsZero() {
		return v
	}
	l := s.Report.Load
	v.SlotsBusy, v.Queue, v.ReportAgeMs = l.SlotsBusy, l.QueueLen, time.Since(s.Report.At).Milliseconds()
	if l.KVKnown {
		kv := l.KVCacheUsage
		v.KVUsage = &kv
	}
	if s.Report.HitKnown {
		h := s.Report.HitRate
		v.CacheHitRate = &h
	}
	return v
}
