package router

import (
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// A caller's W3C traceparent continues through the router: the router's
// spans (request, placement, upstream) join the caller's trace, and the
// engine receives a traceparent of the same trace with the router's
// upstream span as parent.
func TestTraceContextReachesEngine(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	fx, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false), "Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if st != 200 {
		t.Fatalf("status %d: %s", st, body)
	}
	seen := fx.Seen()
	if len(seen) != 1 || !strings.HasPrefix(seen[0].Traceparent, "00-"+traceID+"-") || strings.Contains(seen[0].Traceparent, "00f067aa0ba902b7") {
		t.Fatalf("engine saw traceparent %q; want trace %s with the router's span as parent", seen[0].Traceparent, traceID)
	}
	// The spans end when the handler returns, which can be just after the
	// client has read the whole answer: wait for them.
	waitFor(t, 5*time.Second, "the router's spans to end", func() bool { return len(rec.Ended()) >= 3 })
	names := map[string]bool{}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID().String() != traceID {
			t.Errorf("span %s in trace %s, not the caller's", s.Name(), s.SpanContext().TraceID())
		}
		names[s.Name()] = true
	}
	for _, want := range []string{"llorch.request", "llorch.placement", "llorch.upstream"} {
		if !names[want] {
			t.Errorf("no %s span (got %v)", want, names)
		}
	}
	upstreamSpan := ""
	for _, s := range rec.Ended() {
		if s.Name() == "llorch.upstream" {
			upstreamSpan = s.SpanContext().SpanID().String()
		}
	}
	if !strings.Contains(seen[0].Traceparent, upstreamSpan) {
		t.Errorf("engine's parent span %q is not the upstream span %s", seen[0].Traceparent, upstreamSpan)
	}
}
