package router

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/engineclient"
)

// probeSink records the router's in-flight count on an instance while the
// answer is relayed and when the sink is told it ended.
type probeSink struct {
	rt             *Router
	id             string
	duringRelay    int // in flight while the engine's bytes were relayed
	atEnd          int // in flight when end was called (the client's final flush)
	chunks, events int
	ended          bool
}

func (p *probeSink) commit(*engineclient.Response, bool) error { return nil }
func (p *probeSink) event([]byte, bool) error {
	p.events++
	p.duringRelay = max(p.duringRelay, p.rt.state.InFlight(p.id))
	return nil
}
func (p *probeSink) chunk([]byte) error {
	p.chunks++
	p.duringRelay = max(p.duringRelay, p.rt.state.InFlight(p.id))
	return nil
}
func (p *probeSink) end(registry.Instance) error {
	p.ended, p.atEnd = true, p.rt.state.InFlight(p.id)
	return nil
}
func (p *probeSink) broken(registry.Instance, string, bool) outcomeKind { return outcomeDone }

// An answer counts in flight on its instance while the engine sends it
// and no longer once the engine's last byte is read, before the client's
// final flush: the engines' load reports then count the same requests as
// this router does, so another router's share is not underestimated while
// this one finishes relaying (engineload.go).
func TestSlotFreedWhenEngineAnswerEnds(t *testing.T) {
	_, u := startFixture(t)
	in := inst(t, "a", "n1", testModel, u)
	h := newHarness(t, nil, in)
	for _, stream := range []bool{false, true} {
		call := &upstreamCall{model: testModel, path: "/v1/chat/completions", body: []byte(chatBody(testModel, stream)), stream: stream,
			ri: &reqInfo{id: "slot-test", base: hclog.NewNullLogger()}, start: time.Now()}
		p := &probeSink{rt: h.rt, id: in.ID}
		res := h.rt.relay(context.Background(), call, []registry.Instance{in}, p)
		if !res.answered || !p.ended || p.chunks+p.events == 0 {
			t.Fatalf("stream=%v: relay %+v, sink ended=%v after %d chunks, %d events", stream, res, p.ended, p.chunks, p.events)
		}
		if p.duringRelay != 1 || p.atEnd != 0 {
			t.Errorf("stream=%v: in flight %d while relaying, %d at the final flush; want 1, then 0", stream, p.duringRelay, p.atEnd)
		}
		if n := h.rt.state.InFlight(in.ID); n != 0 {
			t.Errorf("stream=%v: %d in flight after the relay", stream, n)
		}
	}
}
