package router

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// /v2/nodes shows each engine's own load report; when the engine stops
// reporting, the router shows (and places by) unknown load after the
// stale limit, not the last figures as if they were current, nor idle.
func TestNodesShowLiveLoadAndStale(t *testing.T) {
	e := &slotEngine{slots: 2, hold: time.Millisecond}
	srv := httptest.NewServer(e)
	in := inst(t, "e0", "n0", testModel, srv.URL)
	in.Engine, in.Slots = "llamacpp", 2
	stale := 150 * time.Millisecond
	h := newHarness(t, func(c *Config) { c.EnginePoll, c.EngineStaleAfter = 10*time.Millisecond, stale }, in)
	e.cur.Store(1) // someone else's request holds a slot
	waitLoad(t, h, "e0", 1)
	live := func() liveView {
		t.Helper()
		status, _, body := h.do("GET", "/v2/nodes", "")
		var out struct {
			Nodes []struct {
				Engines []engineView `json:"engines"`
			} `json:"nodes"`
		}
		if err := json.Unmarshal([]byte(body), &out); status != 200 || err != nil || len(out.Nodes) != 1 || out.Nodes[0].Engines[0].Live == nil {
			t.Fatalf("/v2/nodes %d %s: %v", status, body, err)
		}
		return *out.Nodes[0].Engines[0].Live
	}
	if l := live(); l.State != "fresh" || l.SlotsBusy != 1 || l.ReportAgeMs < 0 {
		t.Errorf("live view %+v, want fresh with 1 busy", l)
	}
	if ld := (liveLoad{h.rt.state, h.rt.engines, nil}).Load("e0"); !ld.Reported || ld.SlotsBusy != 1 {
		t.Errorf("placement load %+v, want the engine's report", ld)
	}
	srv.Close() // reports stop
	waitFor(t, stale+2*time.Second, "stale view", func() bool { return live().State == "stale" })
	if ld := (liveLoad{h.rt.state, h.rt.engines, nil}).Load("e0"); !ld.Stale || ld.Reported {
		t.Errorf("placement load after reports stopped: %+v, want stale (unknown), not reported", ld)
	}
	if l := live(); l.Error == "" {
		t.Errorf("stale view %+v carries no poll error", l)
	}
}

// Placement sees each request at an engine once: other routers' requests
// in its slots and queue (the report's Others), plus this router's own
// wherever they wait, the queue not added a second time. Here another
// router holds both slots and this router's request waits in the engine's
// queue: three at the engine, two of them another router's.
func TestPlacementCountsTheEngineQueueOnce(t *testing.T) {
	e := &slotEngine{slots: 2, hold: 5 * time.Second}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	in := inst(t, "e0", "n0", testModel, srv.URL)
	in.Engine, in.Slots = "llamacpp", 0 // no slot limit: the request goes in although the slots are taken
	h := newHarness(t, func(c *Config) { c.EnginePoll, c.EngineStaleAfter = 10*time.Millisecond, time.Second }, in)
	e.cur.Store(2) // another router's two requests
	waitLoad(t, h, "e0", 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "POST", h.srv.URL+"/v1/chat/completions", strings.NewReader(chatBody(testModel, false)))
		req.Header.Set("Authorization", "Bearer "+clientToken)
		if resp, err := h.cl.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 5*time.Second, "reports of this router's request in the engine's queue", func() bool {
		s := h.rt.engines.Get("e0")
		return h.rt.state.InFlight("e0") == 1 && s.Report.Load.QueueLen == 1 && s.Report.Others == 2 && s.Report.OthersHeld == 2
	})
	ld := (liveLoad{h.rt.state, h.rt.engines, nil}).Load("e0")
	if total := max(ld.InFlight, ld.SlotsBusy) + ld.Queue; !ld.Reported || total != 3 {
		t.Errorf("placement load %+v: %d requests at the engine, want 3", ld, total)
	}
}
