package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/engineclient"
)

// The one upstream-call path: /v1 relays and /v2 tasks both build an
// upstreamCall and hand it, with the placer's candidates and a sink for
// the answer, to relay. relay tries instances in order until one answers;
// attempt is one try, with the same timeouts, instance-gone watch and
// outlier accounting whoever asked.

// upstreamCall is one client request on its way to an engine.
type upstreamCall struct {
	model  string
	path   string
	body   []byte
	stream bool        // the engine will stream (SSE): first-byte timeout; else the generation timeout
	header http.Header // client headers passed on (upstreamHeaders), may be nil
	ri     *reqInfo
	start  time.Time
	key    *keyUse // the API key's hold on this request (nil: none); its sink meters the answer
	// wire, when set, is the body as the engine gets it (resume asks for
	// token ids); body stays the client's.
	wire []byte

	// Per-attempt state, reused by every attempt of this request.
	engine engineclient.Call
	req    engineclient.Request
	client clientSink // a /v1 call's sink (relayToClient)
}

// wireBody is what the engine is sent.
func (c *upstreamCall) wireBody() []byte {
	if c.wire != nil {
		return c.wire
	}
	return c.body
}

// sink is where a committed answer goes.
type sink interface {
	// commit takes the engine's status and headers; an error ends the
	// attempt (the client went away, or the sink cannot use the answer).
	commit(resp *engineclient.Response, sse bool) error
	// event is one whole SSE event; more says another complete one is
	// already buffered (a flush can wait for it).
	event(ev []byte, more bool) error
	// chunk is bytes of a non-SSE answer.
	chunk(p []byte) error
	// end: the engine finished cleanly.
	end(inst registry.Instance) error
	// broken: the engine failed after commit. It returns outcomeAbort when
	// the client cannot be told in-band (a non-SSE answer).
	broken(inst registry.Instance, reason string, sse bool) outcomeKind
}

type outcomeKind int

const (
	outcomeDone       outcomeKind = iota // answered (or the client left): stop
	outcomeRetry                         // failed before the first byte: try the next instance
	outcomeBusy                          // the engine said 429 / 503 + Retry-After: try the next
	outcomeAbort                         // failed after committing a non-SSE response
	outcomeGenTimeout                    // a non-streamed answer ran past the generation timeout
)

type outcome struct {
	kind       outcomeKind
	reason     string // for the log and the final error
	label      string // bounded metrics label
	retryAfter time.Duration
}

// relayResult is what relay did.
type relayResult struct {
	answered bool          // an answer was committed, or the client left
	abort    bool          // a committed non-SSE answer broke: abort the response
	busyFor  time.Duration // > 0: every instance tried was busy; queue and place again
	// again: every instance tried left the registry before answering
	// (its node failed); nothing was sent, so place again on the view
	// as it is now.
	again bool
	err   *apierr.Error // nothing answered: tell the client this
}

// Timeouts that cancel an attempt, by what they mean.
var (
	errFirstByte  = errors.New("no first byte within first-byte-timeout")
	errIdle       = errors.New("engine silent for longer than idle-stream-timeout")
	errGeneration = errors.New("no answer within generation-timeout")
)

// Engine "not now" back-off bounds: a 429 or 503 + Retry-After keeps the
// instance out of placement this long (its Retry-After, within bounds).
const (
	busyDefault = time.Second
	busyMax     = 30 * time.Second
)

// upstreamHeaders are the client headers passed to engines. An allow-list:
// the client's credentials, in whatever header, must never reach an engine.
var upstreamHeaders = []string{"Accept", "User-Agent", "Traceparent", "Tracestate", "Baggage", "Idempotency-Key"}

// eventPool holds the buffers SSE events are read into (one per stream
// while it runs; an event that outgrows it gets its own).
var eventPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

var copyPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// generationTimeout is the model's generation timeout.
func (rt *Router) generationTimeout(model string) time.Duration {
	if d, ok := rt.genTimeouts[model]; ok {
		return d
	}
	return rt.cfg.GenerationTimeout
}

// relay tries cands (at most 1+retries, within the retry budget) until one
// answers.
func (rt *Router) relay(ctx context.Context, call *upstreamCall, cands []registry.Instance, s sink) relayResult {
	s = call.key.sink(s)
	s = rt.withResume(ctx, call, cands, s)
	// The client leaving aborts whichever attempt is under way.
	stop := context.AfterFunc(ctx, func() { call.engine.Abort(context.Canceled) })
	defer stop()
	attempts := 1 + rt.cfg.Retries
	deadline := call.start.Add(rt.cfg.RetryBudget)
	var failures []string
	tried, busy, gone, tlsFailed := 0, 0, 0, 0
	var busyFor time.Duration
	for _, inst := range cands {
		if tried >= attempts {
			break
		}
		if tried > 0 {
			if time.Now().After(deadline) {
				failures = append(failures, "retry budget spent")
				break
			}
			// Another request may have ejected it, or been told "busy",
			// since placement.
			if rt.state.EjectedFor(inst.ID) > 0 || rt.state.BusyFor(inst.ID) > 0 {
				continue
			}
		}
		tried++
		out := rt.attempt(ctx, call, inst, s)
		switch out.kind {
		case outcomeDone:
			return relayResult{answered: true}
		case outcomeAbort:
			return relayResult{answered: true, abort: true}
		case outcomeGenTimeout:
			call.ri.logger().Warn("generation timeout: the answer is abandoned, not re-run", "instance_id", inst.ID, "model", call.model)
			return relayResult{err: &apierr.Error{Status: http.StatusGatewayTimeout, Code: CodeGenerationTimeout,
				Message: fmt.Sprintf("instance %s did not finish the answer within the generation timeout (%s)", inst.ID, rt.generationTimeout(call.model))}}
		case outcomeBusy:
			busy++
			busyFor = max(busyFor, out.retryAfter)
		}
		switch out.label {
		case "gone":
			gone++
		case "tls":
			tlsFailed++
		}
		failures = append(failures, inst.ID+": "+out.reason)
		rt.metrics.retries.WithLabelValues(out.label).Inc()
		call.ri.logger().Warn("instance did not take the request; trying the next", "instance_id", inst.ID, "model", call.model, "reason", out.reason)
	}
	if ctx.Err() != nil {
		return relayResult{answered: true}
	}
	if busy > 0 && busy == tried {
		return relayResult{busyFor: busyFor}
	}
	if gone > 0 && gone == tried && time.Now().Before(deadline) {
		return relayResult{again: true}
	}
	if tlsFailed > 0 && tlsFailed == tried {
		// A configuration fault (CA bundle, certificate names, client
		// certificate), not a busy fleet: say so, in the log too.
		return relayResult{err: &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeEngineTLS, Retriable: true, RetryAfter: time.Second,
			Message: fmt.Sprintf("no instance of model %q could be reached over TLS (%d tried: %s)", call.model, tried, strings.Join(failures, "; "))}}
	}
	return relayResult{err: &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeReplicaExhausted, Retriable: true, RetryAfter: time.Second,
		Message: fmt.Sprintf("no instance of model %q answered (%d tried: %s)", call.model, tried, strings.Join(failures, "; "))}}
}

// attempt sends the request to one instance and, once the instance has
// produced its first byte of body, commits the answer to the sink.
//
// It runs on the caller's goroutine (engineclient: no transport
// goroutines), and its clocks are socket deadlines: connect-timeout (the
// dial); then, for a stream, first-byte-timeout until the first event, or
// for a non-streamed answer the generation timeout until its first byte
// (engines send headers only when the answer is done); then
// idle-stream-timeout between events or body reads. The client leaving and
// the instance leaving the registry abort the call (engineclient.Call).
func (rt *Router) attempt(ctx context.Context, call *upstreamCall, inst registry.Instance, s sink) outcome {
	st := rt.state.get(inst.ID)
	slot := st.hold()
	defer slot.release()

	var span trace.Span
	if tracing.Enabled() {
		ctx, span = tracer.Start(ctx, "llorch.upstream", trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("llorch.instance_id", inst.ID), attribute.String("llorch.node_id", inst.NodeID)))
		defer span.End()
	}
	uc := &call.engine
	uc.Reset()
	if ctx.Err() != nil { // after Reset: a later cancel reaches this attempt's call
		return outcome{kind: outcomeDone}
	}
	st.watchGone(uc)
	defer st.unwatchGone(uc)
	rt.buildUpstreamRequest(ctx, call)

	firstWait, firstCause := rt.cfg.FirstByteTimeout, errFirstByte
	if !call.stream {
		firstWait, firstCause = rt.generationTimeout(call.model), errGeneration
	}
	resp, err := rt.engineCl.Do(ctx, uc, rt.endpoints.of(inst), &call.req, time.Now().Add(firstWait))
	if err != nil {
		return rt.beforeFirstByte(ctx, inst, err, callCause(uc, err, firstCause), "")
	}
	defer resp.Close()

	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		if d, ok := retryAfterOf(resp.Header("Retry-After")); ok || resp.StatusCode == http.StatusTooManyRequests {
			// "Not now": another instance, or the queue; not a fault.
			if !ok {
				d = busyDefault
			}
			rt.state.busy(inst.ID, d)
			resp.DiscardBody(64 << 10)
			return outcome{kind: outcomeBusy, reason: "busy (status " + strconv.Itoa(resp.StatusCode) + ")", label: "busy", retryAfter: d}
		}
		fallthrough
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		rt.state.gatewayFailure(inst.ID)
		resp.DiscardBody(64 << 10) // lets the connection be reused
		return outcome{kind: outcomeRetry, reason: "status " + strconv.Itoa(resp.StatusCode), label: "status_" + strconv.Itoa(resp.StatusCode)}
	}

	br := resp.Body
	sse := bytes.HasPrefix(resp.Header("Content-Type"), []byte("text/event-stream"))
	var first, evBuf []byte
	if sse {
		bp := eventPool.Get().(*[]byte)
		defer eventPool.Put(bp)
		first, err = readEvent(br, (*bp)[:0])
		evBuf = first
	} else {
		_, err = br.Peek(1)
	}
	if err != nil && !(err == io.EOF && len(first) == 0) {
		return rt.beforeFirstByte(ctx, inst, err, callCause(uc, err, firstCause), "before the first byte: ")
	}

	// Commit: from here on a vanished instance breaks the stream instead of
	// being retried (the client has bytes already).
	// A sink that can continue a stream elsewhere keeps the watch: the
	// instance leaving the registry (its node failed) breaks the stream at
	// once, so it is resumed, instead of waiting out the idle timeout.
	if w, ok := s.(interface{ resumesOnGone() bool }); !ok || !w.resumesOnGone() {
		st.unwatchGone(uc)
	}
	call.ri.instance, call.ri.node = inst.ID, inst.NodeID
	if err := s.commit(resp, sse); err != nil {
		if errors.Is(err, errTaskRefused) {
			rt.account(inst.ID, resp.StatusCode)
		}
		return outcome{kind: outcomeDone}
	}
	rt.firstByteObserver(pathLabel(call.path)).Observe(time.Since(call.start).Seconds())
	idle := idleDeadline{resp: resp, d: rt.cfg.IdleStreamTimeout}
	idle.arm(time.Now())

	var upErr error
	if sse {
		upErr = rt.pumpSSE(s, br, first, evBuf, &idle)
	} else {
		upErr = rt.pumpBody(s, br, &idle)
	}
	if upErr == nil {
		// The engine's last byte is read: its slot is free there, so it
		// stops counting here before the client's final flush (a report
		// taken meanwhile would otherwise charge it to no one).
		slot.release()
		upErr = s.end(inst)
	}
	switch {
	case upErr == nil:
		rt.account(inst.ID, resp.StatusCode)
	case ctx.Err() != nil || errors.Is(upErr, errClientWrite):
		call.ri.logger().Debug("client went away; upstream request cancelled", "instance_id", inst.ID, "error", upErr)
		return outcome{kind: outcomeDone}
	default:
		rt.state.gatewayFailure(inst.ID)
		_, reason := classify(upErr, callCause(uc, upErr, errIdle))
		call.ri.logger().Warn("engine failed mid-answer", "instance_id", inst.ID, "model", call.model, "reason", reason)
		return outcome{kind: s.broken(inst, reason, sse)}
	}
	return outcome{kind: outcomeDone}
}

// callCause says why a call failed: what aborted it, else the deadline
// that was running out when a read timed out (first byte, generation,
// idle), else nothing (the engine's own failure).
func callCause(uc *engineclient.Call, err, deadlineCause error) error {
	if c := uc.Cause(); c != nil {
		return c
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !isDialError(err) {
		return deadlineCause
	}
	return nil
}

func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// idleDeadline keeps the idle-stream-timeout on the engine's socket. It
// moves the deadline only when a sixteenth of the timeout has passed since
// the last move, so a fast stream does not touch its timer per event; the
// silence allowed is therefore between 15/16 of the timeout and all of it.
type idleDeadline struct {
	resp  *engineclient.Response
	d     time.Duration
	armed time.Time
}

func (t *idleDeadline) arm(now time.Time) {
	t.armed = now
	_ = t.resp.SetReadDeadline(now.Add(t.d))
}

func (t *idleDeadline) touch() {
	if now := time.Now(); now.Sub(t.armed) > t.d/16 {
		t.arm(now)
	}
}

// buildUpstreamRequest fills call.req: the path, the body the engine gets,
// the client headers on the allow-list, the correlation id, the trace
// context and the engine token.
func (rt *Router) buildUpstreamRequest(ctx context.Context, call *upstreamCall) {
	req := &call.req
	req.Reset()
	req.Path, req.Body = call.path, call.wireBody()
	traced := tracing.Enabled()
	for _, h := range upstreamHeaders {
		if traced && isTraceHeader(h) {
			continue // the upstream span's context replaces the client's
		}
		for _, v := range call.header[h] {
			req.Set(h, v)
		}
	}
	req.Set("Content-Type", "application/json")
	if call.stream && len(call.header["Accept"]) == 0 {
		req.Set("Accept", "text/event-stream")
	}
	req.Set(CorrelationHeader, call.ri.id)
	if traced {
		var carrier traceCarrier
		tracing.Propagator.Inject(ctx, &carrier)
		for _, kv := range carrier.kv {
			req.Set(kv[0], kv[1])
		}
	}
	if rt.engineAuth != "" {
		req.Set("Authorization", rt.engineAuth)
	}
}

func isTraceHeader(h string) bool { return h == "Traceparent" || h == "Tracestate" || h == "Baggage" }

// traceCarrier collects what the propagator injects.
type traceCarrier struct{ kv [][2]string }

func (c *traceCarrier) Get(string) string { return "" }
func (c *traceCarrier) Set(k, v string) {
	k = http.CanonicalHeaderKey(k)
	for i := range c.kv {
		if c.kv[i][0] == k {
			c.kv[i][1] = v
			return
		}
	}
	c.kv = append(c.kv, [2]string{k, v})
}
func (c *traceCarrier) Keys() []string { return nil }

// account records a complete answer: a 5xx passed through (the engine's
// own answer) counts against the success rate, not as a gateway failure;
// anything else, 4xx included, shows the engine works.
func (rt *Router) account(id string, status int) {
	if status >= 500 {
		rt.state.serverError(id)
	} else {
		rt.state.success(id)
	}
}

// beforeFirstByte sorts a failure before anything was committed: the
// client left (stop), the generation timeout ran out (stop, no blame), the
// instance left the registry (next, no blame), or a gateway failure (next).
func (rt *Router) beforeFirstByte(ctx context.Context, inst registry.Instance, err, cause error, prefix string) outcome {
	switch {
	case ctx.Err() != nil:
		return outcome{kind: outcomeDone}
	case errors.Is(cause, errGeneration):
		return outcome{kind: outcomeGenTimeout}
	case errors.Is(cause, errInstanceGone):
	default:
		rt.state.gatewayFailure(inst.ID)
	}
	label, reason := classify(err, cause)
	return outcome{kind: outcomeRetry, reason: prefix + reason, label: label}
}

// retryAfterOf reads a Retry-After value (seconds or an HTTP date), bounded.
func retryAfterOf(raw []byte) (time.Duration, bool) {
	v := strings.TrimSpace(string(raw))
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	} else {
		return 0, false
	}
	return min(max(d, 100*time.Millisecond), busyMax), true
}

// pumpSSE hands whole events to the sink. A partial event left by a
// failing engine is dropped, so the error event that follows parses.
func (rt *Router) pumpSSE(s sink, br *bufio.Reader, first, buf []byte, idle *idleDeadline) error {
	ev := first
	for {
		if len(ev) > 0 {
			if err := s.event(ev, completeEventBuffered(br)); err != nil {
				return err
			}
		}
		var err error
		ev, err = readEvent(br, buf[:0])
		buf = ev
		if err == io.EOF {
			if len(ev) > 0 { // the engine closed cleanly without a final blank line
				return s.event(ev, false)
			}
			return nil
		}
		if err != nil {
			return err
		}
		idle.touch()
	}
}

// pumpBody hands a non-SSE answer to the sink as it arrives.
func (rt *Router) pumpBody(s sink, br *bufio.Reader, idle *idleDeadline) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	buf := *bp
	for {
		n, err := br.Read(buf)
		if n > 0 {
			idle.touch()
			if werr := s.chunk(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readEvent reads one SSE event: lines up to and including a blank line
// (a lone blank line, a keep-alive, counts as an event and is relayed). At
// a clean end of stream it returns what it has with io.EOF.
func readEvent(br *bufio.Reader, buf []byte) ([]byte, error) {
	continued := false // the previous segment was a line longer than the buffer
	for {
		line, err := br.ReadSlice('\n')
		buf = append(buf, line...)
		switch {
		case err == bufio.ErrBufferFull:
			continued = true
			continue
		case err == io.EOF:
			return buf, io.EOF
		case err != nil:
			return nil, err
		}
		blank := !continued && (len(line) == 1 || (len(line) == 2 && line[0] == '\r'))
		continued = false
		if blank {
			return buf, nil
		}
	}
}

// completeEventBuffered reports whether a whole event is already waiting in
// the reader, in which case flushing can wait for it.
func completeEventBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := br.Peek(n)
	return bytes.Contains(b, []byte("\n\n")) || bytes.Contains(b, []byte("\n\r\n"))
}

// classify names an upstream failure for logs and a bounded metrics label.
func classify(err, cause error) (label, reason string) {
	var ne net.Error
	switch {
	case errors.Is(cause, errIdle), errors.Is(cause, errFirstByte):
		return "timeout", cause.Error()
	case errors.Is(cause, errInstanceGone):
		return "gone", errInstanceGone.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", "timed out: " + err.Error()
	case isTLSError(err):
		return "tls", "TLS handshake failed: " + err.Error()
	case isDialError(err):
		return "connect", "connect failed: " + err.Error()
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "reset", "connection closed by the engine"
	default:
		return "reset", err.Error()
	}
}
