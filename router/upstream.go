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
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry"
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
}

// sink is where a committed answer goes.
type sink interface {
	// commit takes the engine's status and headers; an error ends the
	// attempt (the client went away, or the sink cannot use the answer).
	commit(resp *http.Response, sse bool) error
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

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

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
	call, s = rt.withResume(ctx, call, cands, s)
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
// Its clocks: connect-timeout (the dialer); then, for a stream,
// first-byte-timeout until the first event, or for a non-streamed answer
// the generation timeout until its first byte (engines send headers only
// when the answer is done); then idle-stream-timeout between events or
// body reads.
func (rt *Router) attempt(ctx context.Context, call *upstreamCall, inst registry.Instance, s sink) outcome {
	release := rt.state.acquire(inst.ID)
	defer release()

	sctx, span := tracer.Start(ctx, "llorch.upstream", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("llorch.instance_id", inst.ID), attribute.String("llorch.node_id", inst.NodeID)))
	defer span.End()
	actx, cancel := context.WithCancelCause(sctx)
	defer cancel(nil)
	unwatch := rt.state.watchGone(inst.ID, cancel)
	defer unwatch()
	up, err := http.NewRequestWithContext(actx, http.MethodPost, inst.URL()+call.path, bytes.NewReader(call.body))
	if err != nil {
		return outcome{kind: outcomeRetry, reason: "bad instance address: " + err.Error(), label: "bad_address"}
	}
	for _, h := range upstreamHeaders {
		if v := call.header.Values(h); len(v) > 0 {
			up.Header[h] = v
		}
	}
	up.Header.Set("Content-Type", "application/json")
	if call.stream && up.Header.Get("Accept") == "" {
		up.Header.Set("Accept", "text/event-stream")
	}
	up.Header.Set(CorrelationHeader, call.ri.id)
	markReplayable(up.Header)
	tracing.Propagator.Inject(actx, propagation.HeaderCarrier(up.Header))
	if rt.engineToken != "" {
		up.Header.Set("Authorization", "Bearer "+rt.engineToken)
	}

	firstWait, firstCause := rt.cfg.FirstByteTimeout, errFirstByte
	if !call.stream {
		firstWait, firstCause = rt.generationTimeout(call.model), errGeneration
	}
	timer := time.AfterFunc(firstWait, func() { cancel(firstCause) })
	defer func() { timer.Stop() }()

	resp, err := rt.transport.RoundTrip(up)
	if err != nil {
		return rt.beforeFirstByte(ctx, inst, err, context.Cause(actx), "")
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		if d, ok := retryAfterOf(resp.Header); ok || resp.StatusCode == http.StatusTooManyRequests {
			// "Not now": another instance, or the queue; not a fault.
			if !ok {
				d = busyDefault
			}
			rt.state.busy(inst.ID, d)
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			return outcome{kind: outcomeBusy, reason: "busy (status " + strconv.Itoa(resp.StatusCode) + ")", label: "busy", retryAfter: d}
		}
		fallthrough
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		rt.state.gatewayFailure(inst.ID)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		return outcome{kind: outcomeRetry, reason: "status " + strconv.Itoa(resp.StatusCode), label: "status_" + strconv.Itoa(resp.StatusCode)}
	}

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() { br.Reset(nil); readerPool.Put(br) }()

	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	var first, evBuf []byte
	if sse {
		first, err = readEvent(br, evBuf[:0])
		evBuf = first
	} else {
		_, err = br.Peek(1)
	}
	if err != nil && !(err == io.EOF && len(first) == 0) {
		return rt.beforeFirstByte(ctx, inst, err, context.Cause(actx), "before the first byte: ")
	}

	// Commit: from here on a vanished instance breaks the stream instead of
	// being retried (the client has bytes already).
	// A sink that can continue a stream elsewhere keeps the watch: the
	// instance leaving the registry (its node failed) breaks the stream at
	// once, so it is resumed, instead of waiting out the idle timeout.
	if w, ok := s.(interface{ resumesOnGone() bool }); !ok || !w.resumesOnGone() {
		unwatch()
	}
	call.ri.instance, call.ri.node = inst.ID, inst.NodeID
	if err := s.commit(resp, sse); err != nil {
		if errors.Is(err, errTaskRefused) {
			rt.account(inst.ID, resp.StatusCode)
		}
		return outcome{kind: outcomeDone}
	}
	rt.metrics.firstByte.WithLabelValues(pathLabel(call.path)).Observe(time.Since(call.start).Seconds())
	timer.Stop()
	timer = time.AfterFunc(rt.cfg.IdleStreamTimeout, func() { cancel(errIdle) })

	var upErr error
	if sse {
		upErr = rt.pumpSSE(s, br, first, evBuf, timer)
	} else {
		upErr = rt.pumpBody(s, br, timer)
	}
	if upErr == nil {
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
		_, reason := classify(upErr, context.Cause(actx))
		call.ri.logger().Warn("engine failed mid-answer", "instance_id", inst.ID, "model", call.model, "reason", reason)
		return outcome{kind: s.broken(inst, reason, sse)}
	}
	return outcome{kind: outcomeDone}
}

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

// retryAfterOf reads Retry-After (seconds or an HTTP date), bounded.
func retryAfterOf(h http.Header) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
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
func (rt *Router) pumpSSE(s sink, br *bufio.Reader, first, buf []byte, timer *time.Timer) error {
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
		timer.Reset(rt.cfg.IdleStreamTimeout)
	}
}

// pumpBody hands a non-SSE answer to the sink as it arrives.
func (rt *Router) pumpBody(s sink, br *bufio.Reader, timer *time.Timer) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	buf := *bp
	for {
		n, err := br.Read(buf)
		if n > 0 {
			timer.Reset(rt.cfg.IdleStreamTimeout)
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
	var oe *net.OpError
	switch {
	case errors.Is(cause, errIdle), errors.Is(cause, errFirstByte):
		return "timeout", cause.Error()
	case errors.Is(cause, errInstanceGone):
		return "gone", errInstanceGone.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", "timed out: " + err.Error()
	case isTLSError(err):
		return "tls", "TLS handshake failed: " + err.Error()
	case errors.As(err, &oe) && oe.Op == "dial":
		return "connect", "connect failed: " + err.Error()
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "reset", "connection closed by the engine"
	default:
		return "reset", err.Error()
	}
}
