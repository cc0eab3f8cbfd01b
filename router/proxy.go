package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/router/engineclient"
	"github.com/llorch/llorch/scheduler"
)

// tracer makes the router's spans: request, placement (admission
// included), upstream call.
var tracer = currentTracer{"router"}

// currentTracer asks the global provider for its tracer at each use (only
// with tracing on): a tracer taken once, at start, stays bound to the
// first provider ever installed.
type currentTracer struct{ component string }

func (c currentTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	return tracing.Tracer(c.component).Start(ctx, name, opts...)
}

// retryAfter is the retry hint for retriable placement errors.
func retryAfter(retriable bool) time.Duration {
	if retriable {
		return time.Second
	}
	return 0
}

// serveProxy handles the OpenAI POST endpoints.
func (rt *Router) serveProxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ri := infoFrom(r.Context())
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		apierr.Write(w, &apierr.Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed, Message: "use POST on " + r.URL.Path})
		return
	}
	// The whole body is read before any upstream call: retries replay it,
	// and a request body streamed through a reverse proxy under load is
	// what truncated streams in golang/go#40747.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apierr.Write(w, &apierr.Error{Status: http.StatusRequestEntityTooLarge, Code: CodeRequestTooLarge,
				Message: fmt.Sprintf("request body is over the %d-byte limit", mbe.Limit)})
			return
		}
		ri.logger().Debug("reading request body failed", "error", err)
		apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Message: "reading the request body failed: " + err.Error()})
		return
	}
	req, perr := parseRequest(r.URL.Path, body)
	if perr != nil {
		apierr.Write(w, perr)
		return
	}
	// The request's span continues the caller's trace (W3C traceparent);
	// the upstream call carries it on to the engine.
	// With tracing off no span is made: the client's traceparent is passed
	// to the engine as it came (upstreamHeaders).
	if tracing.Enabled() {
		tctx, span := tracer.Start(tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)), "llorch.request",
			trace.WithAttributes(attribute.String("llorch.path", r.URL.Path), attribute.String("correlation_id", ri.id)))
		defer span.End()
		r = r.WithContext(tctx)
	}
	prio, perr2 := priorityOf(r)
	if perr2 != nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: "X-Priority", Message: perr2.Error()})
		return
	}
	if e := rt.notSynced(); e != nil {
		apierr.Write(w, e)
		return
	}
	// A key's allow-list applies to the model that answers: an alias is
	// checked as its target (fallbacks in placeRouted).
	ku, ok := rt.admitKey(w, r, rt.routes.resolve(*req.Model), &prio)
	if !ok {
		return
	}
	defer func() { ku.end(r.Context().Err() != nil) }()
	pr := PlaceRequest{Model: *req.Model, Path: r.URL.Path, Stream: req.Stream != nil && *req.Stream,
		BodyBytes: len(body), Local: rt.state, Session: r.Header.Get("X-Session-Id"), Prefix: promptPrefix(body)}
	if req.User != nil {
		pr.User = *req.User
	}
	call := &upstreamCall{model: pr.Model, path: r.URL.Path, body: ku.upstreamBody(body, pr.Stream), stream: pr.Stream, header: r.Header, ri: ri, start: start, key: ku}
	queueDeadline := start.Add(rt.cfg.QueueTimeout)
	for {
		cands, e := rt.placeForProxy(w, r, &pr, &call.body, prio, queueDeadline)
		if e != nil || cands == nil {
			return // answered (or the client left)
		}
		call.model = pr.Model // an alias or a fallback may have changed it
		ku.wasPlaced()
		res := rt.relayToClient(w, r, call, cands)
		if res.again {
			continue // every instance tried left the registry: place again
		}
		if res.busyFor <= 0 {
			return
		}
		// Every instance tried said "not now": they count as full until
		// their Retry-After, so placing again queues the request.
		if time.Now().Add(res.busyFor).After(queueDeadline) {
			apierr.Write(w, &apierr.Error{Status: http.StatusTooManyRequests, Code: CodeEnginesBusy, Retriable: true, RetryAfter: res.busyFor,
				Message: fmt.Sprintf("every instance of model %q is busy", pr.Model)})
			return
		}
	}
}

// placeForProxy places (queueing while the model is saturated) and
// answers the client itself when placement fails: then it returns nil.
func (rt *Router) placeForProxy(w http.ResponseWriter, r *http.Request, pr *PlaceRequest, body *[]byte, prio admission.Priority, deadline time.Time) ([]registry.Instance, error) {
	ri := infoFrom(r.Context())
	var cands []registry.Instance
	var err error
	if tracing.Enabled() {
		pctx, pspan := tracer.Start(r.Context(), "llorch.placement", trace.WithAttributes(attribute.String("llorch.model", pr.Model)))
		cands, err = rt.placeRouted(pctx, w, pr, body, prio, deadline)
		if err != nil {
			pspan.SetStatus(codes.Error, err.Error())
		} else if len(cands) > 0 {
			pspan.SetAttributes(attribute.String("llorch.instance_id", cands[0].ID), attribute.String("llorch.node_id", cands[0].NodeID), attribute.Int("llorch.candidates", len(cands)))
		}
		pspan.End()
	} else {
		cands, err = rt.placeRouted(r.Context(), w, pr, body, prio, deadline)
	}
	if err == nil && len(cands) > 0 { // the common case, before the error targets below (they escape)
		ri.model = pr.Model
		return cands, nil
	}
	var nc *NoCapacityError
	var se *scheduler.Error
	var ae *admission.Error
	switch {
	case errors.As(err, &ae):
		ri.model = pr.Model
		ae.WriteHTTP(w)
	case r.Context().Err() != nil:
		// the client left while queued
	case errors.As(err, &se):
		e := &apierr.Error{Status: se.Status, Code: se.Code, Message: se.Message, Retriable: se.Retriable, RetryAfter: retryAfter(se.Retriable)}
		if se.Code == scheduler.CodeModelNotAvailable {
			// A client-chosen name never becomes a metrics label.
			e.Param = "model"
		} else {
			ri.model = pr.Model
		}
		apierr.Write(w, e)
	case errors.Is(err, ErrModelNotAvailable):
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: CodeModelNotAvailable, Param: "model", Message: err.Error()})
	case errors.As(err, &nc):
		ri.model = pr.Model
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodePoolUnavailable, Message: err.Error(),
			Retriable: true, RetryAfter: max(time.Millisecond, nc.RetryAfter)})
	case err != nil:
		ri.logger().Error("placement failed", "model", pr.Model, "error", err)
		apierr.Write(w, &apierr.Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "placement failed"})
	case len(cands) == 0:
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodePoolUnavailable, Message: "placement returned no instance",
			Retriable: true, RetryAfter: time.Second})
	default:
		ri.model = pr.Model
		return cands, nil
	}
	return nil, err
}

// relayToClient runs the upstream call with the client's response as the
// sink and writes relay's error, if any.
func (rt *Router) relayToClient(w http.ResponseWriter, r *http.Request, call *upstreamCall, cands []registry.Instance) relayResult {
	rt.metrics.inFlight.Inc()
	defer rt.metrics.inFlight.Dec()
	began := time.Now()
	defer func() { rt.finished(call.model, time.Since(began)) }()
	s := &call.client // allocated with the call
	*s = clientSink{rt: rt, w: w, rc: *http.NewResponseController(w), ri: call.ri}
	res := rt.relay(r.Context(), call, cands, s)
	switch {
	case res.abort:
		// The response was committed and the body broke: the client
		// must see a truncated answer, not a complete-looking one.
		panic(http.ErrAbortHandler)
	case res.err != nil && r.Context().Err() == nil:
		apierr.Write(w, res.err)
	}
	return res
}

// errClientWrite marks a failed write to the client (it went away, or
// stopped reading for longer than client-write-timeout).
var errClientWrite = errors.New("writing to the client failed")

// clientSink relays an answer to the /v1 client: the engine's status and
// headers (hop-by-hop ones stripped), SSE events whole and flushed as soon
// as no further complete event is already buffered (a burst costs one
// flush), and every write under client-write-timeout, so a client that
// stops reading is cut and its slot freed.
type clientSink struct {
	rt *Router
	w  http.ResponseWriter
	rc http.ResponseController
	ri *reqInfo
}

func (s *clientSink) commit(resp *engineclient.Response, sse bool) error {
	h := s.w.Header()
	resp.CopyEndToEnd(h)
	h.Set(CorrelationHeader, s.ri.id)
	if sse {
		h.Del("Content-Length")
		h.Set("X-Accel-Buffering", "no") // tells nginx-style proxies in front not to buffer
	}
	s.deadline()
	s.w.WriteHeader(resp.StatusCode)
	return nil
}

// deadline arms the per-write deadline (unsupported writers: none).
func (s *clientSink) deadline() {
	if d := s.rt.cfg.ClientWriteTimeout; d > 0 {
		_ = s.rc.SetWriteDeadline(time.Now().Add(d))
	}
}

func (s *clientSink) write(p []byte) error {
	s.deadline()
	if _, err := s.w.Write(p); err != nil {
		return fmt.Errorf("%w: %v", errClientWrite, err)
	}
	return nil
}

func (s *clientSink) flush() error {
	s.deadline()
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("%w: %v", errClientWrite, err)
	}
	return nil
}

func (s *clientSink) event(ev []byte, more bool) error {
	if err := s.write(ev); err != nil {
		return err
	}
	if more {
		return nil
	}
	return s.flush()
}

func (s *clientSink) chunk(p []byte) error { return s.write(p) }

func (s *clientSink) end(registry.Instance) error { return s.flush() }

func (s *clientSink) broken(_ registry.Instance, reason string, sse bool) outcomeKind {
	if !sse {
		return outcomeAbort
	}
	s.rt.metrics.streamErrs.WithLabelValues(CodeWorkerReset).Inc()
	_ = s.write(apierr.SSE(&apierr.Error{Status: http.StatusBadGateway, Code: CodeWorkerReset, Retriable: true,
		Message: "the engine failed mid-stream (" + reason + "); the answer is incomplete"}))
	_ = s.flush()
	return outcomeDone
}
