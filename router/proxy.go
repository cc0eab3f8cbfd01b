package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/scheduler"
)

// tracer makes the router's spans: request, placement (admission
// included), upstream call.
var tracer = tracing.Tracer("router")

// retryAfter is the retry hint for retriable placement errors.
func retryAfter(retriable bool) time.Duration {
	if retriable {
		return time.Second
	}
	return 0
}

// presence records whether a JSON field was given (and not null) without
// copying it: messages and prompts can be megabytes.
type presence bool

func (p *presence) UnmarshalJSON(b []byte) error {
	*p = presence(len(b) > 0 && string(b) != "null")
	return nil
}

// openAIRequest is the part of a request body the router reads.
type openAIRequest struct {
	Model    *string  `json:"model"`
	Stream   *bool    `json:"stream"`
	User     *string  `json:"user"`
	Messages presence `json:"messages"`
	Prompt   presence `json:"prompt"`
	Input    presence `json:"input"`
}

// requiredField is the field each endpoint cannot do without.
var requiredField = map[string]string{
	"/v1/chat/completions": "messages",
	"/v1/completions":      "prompt",
	"/v1/embeddings":       "input",
}

// parseRequest validates the body and names the offending field on error.
func parseRequest(path string, body []byte) (openAIRequest, *apierr.Error) {
	var req openAIRequest
	bad := func(param, msg string) *apierr.Error {
		return &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: param, Message: msg}
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return req, bad("", "request body must be a JSON object")
	}
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return req, bad(te.Field, fmt.Sprintf("field %q must be a %s, not a JSON %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value))
		}
		return req, bad("", "request body is not valid JSON: "+err.Error())
	}
	if req.Model == nil || *req.Model == "" {
		return req, bad("model", `field "model" is required (a non-empty string)`)
	}
	need := requiredField[path]
	have := map[string]presence{"messages": req.Messages, "prompt": req.Prompt, "input": req.Input}[need]
	if need != "" && !bool(have) {
		return req, bad(need, fmt.Sprintf("field %q is required on %s", need, path))
	}
	return req, nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "bool":
		return "boolean"
	case "ptr", "string":
		return "string"
	}
	return goKind
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
	tctx, span := tracer.Start(tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)), "llorch.request",
		trace.WithAttributes(attribute.String("llorch.path", r.URL.Path), attribute.String("correlation_id", ri.id)))
	defer span.End()
	r = r.WithContext(tctx)
	prio, perr2 := priorityOf(r)
	if perr2 != nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: "X-Priority", Message: perr2.Error()})
		return
	}
	pr := PlaceRequest{Model: *req.Model, Path: r.URL.Path, Stream: req.Stream != nil && *req.Stream,
		BodyBytes: len(body), Local: rt.state, Session: r.Header.Get("X-Session-Id"), Prefix: promptPrefix(body)}
	if req.User != nil {
		pr.User = *req.User
	}
	pctx, pspan := tracer.Start(r.Context(), "llorch.placement", trace.WithAttributes(attribute.String("llorch.model", pr.Model)))
	cands, err := rt.placeAdmitted(pctx, pr, prio, start.Add(rt.cfg.QueueTimeout))
	if err != nil {
		pspan.SetStatus(codes.Error, err.Error())
	} else if len(cands) > 0 {
		pspan.SetAttributes(attribute.String("llorch.instance_id", cands[0].ID), attribute.String("llorch.node_id", cands[0].NodeID), attribute.Int("llorch.candidates", len(cands)))
	}
	pspan.End()
	var nc *NoCapacityError
	var se *scheduler.Error
	var ae *admission.Error
	switch {
	case errors.As(err, &ae):
		ri.model = pr.Model
		ae.WriteHTTP(w)
		return
	case r.Context().Err() != nil:
		return // the client left while queued
	case errors.As(err, &se):
		e := &apierr.Error{Status: se.Status, Code: se.Code, Message: se.Message, Retriable: se.Retriable, RetryAfter: retryAfter(se.Retriable)}
		if se.Code == scheduler.CodeModelNotAvailable {
			// A client-chosen name never becomes a metrics label.
			e.Param = "model"
		} else {
			ri.model = pr.Model
		}
		apierr.Write(w, e)
		return
	case errors.Is(err, ErrModelNotAvailable):
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: CodeModelNotAvailable, Param: "model", Message: err.Error()})
		return
	case errors.As(err, &nc):
		ri.model = pr.Model
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodePoolUnavailable, Message: err.Error(),
			Retriable: true, RetryAfter: max(time.Millisecond, nc.RetryAfter)})
		return
	case err != nil:
		ri.logger().Error("placement failed", "model", pr.Model, "error", err)
		apierr.Write(w, &apierr.Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "placement failed"})
		return
	case len(cands) == 0:
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodePoolUnavailable, Message: "placement returned no instance",
			Retriable: true, RetryAfter: time.Second})
		return
	}
	ri.model = pr.Model
	rt.metrics.inFlight.Inc()
	defer rt.metrics.inFlight.Dec()
	defer func() { rt.finished(pr.Model, time.Since(start)) }()

	attempts := 1 + rt.cfg.Retries
	deadline := start.Add(rt.cfg.RetryBudget)
	var failures []string
	tried := 0
	for _, inst := range cands {
		if tried >= attempts {
			break
		}
		if tried > 0 {
			if time.Now().After(deadline) {
				failures = append(failures, "retry budget spent")
				break
			}
			// Another request may have ejected it since placement.
			if rt.state.EjectedFor(inst.ID) > 0 {
				continue
			}
		}
		tried++
		out := rt.attempt(w, r, inst, body, pr, ri, start)
		switch out.kind {
		case outcomeDone:
			return
		case outcomeAbort:
			// The response was committed and the body broke: the client
			// must see a truncated answer, not a complete-looking one.
			panic(http.ErrAbortHandler)
		}
		failures = append(failures, inst.ID+": "+out.reason)
		rt.metrics.retries.WithLabelValues(out.label).Inc()
		ri.logger().Warn("instance failed before answering; trying the next", "instance_id", inst.ID, "model", pr.Model, "reason", out.reason)
	}
	if r.Context().Err() != nil {
		return
	}
	apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeReplicaExhausted, Retriable: true, RetryAfter: time.Second,
		Message: fmt.Sprintf("no instance of model %q answered (%d tried: %s)", pr.Model, tried, strings.Join(failures, "; "))})
}

type outcomeKind int

const (
	outcomeDone  outcomeKind = iota // answered (or the client left): stop
	outcomeRetry                    // failed before the first byte: try the next instance
	outcomeAbort                    // failed after committing a non-SSE response
)

type outcome struct {
	kind   outcomeKind
	reason string // for the log and the final error
	label  string // bounded metrics label
}

// errIdle cancels an upstream call that went silent for too long.
var errIdle = errors.New("engine silent for too long")

// upstreamHeaders are the client headers passed to engines. An allow-list:
// the client's credentials, in whatever header, must never reach an engine.
var upstreamHeaders = []string{"Accept", "User-Agent", "Traceparent", "Tracestate", "Baggage", "Idempotency-Key"}

// hopHeaders are connection-level and never relayed back.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// attempt sends the request to one instance and, once the instance has
// produced its first byte of body, commits the response to the client.
func (rt *Router) attempt(w http.ResponseWriter, r *http.Request, inst registry.Instance, body []byte, pr PlaceRequest, ri *reqInfo, start time.Time) outcome {
	log := func() hclog.Logger { return ri.logger().With("instance_id", inst.ID) }
	release := rt.state.acquire(inst.ID)
	defer release()

	sctx, span := tracer.Start(r.Context(), "llorch.upstream", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("llorch.instance_id", inst.ID), attribute.String("llorch.node_id", inst.NodeID)))
	defer span.End()
	ctx, cancel := context.WithCancelCause(sctx)
	defer cancel(nil)
	unwatch := rt.state.watchGone(inst.ID, cancel)
	defer unwatch()
	up, err := http.NewRequestWithContext(ctx, http.MethodPost, inst.URL()+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return outcome{kind: outcomeRetry, reason: "bad instance address: " + err.Error(), label: "bad_address"}
	}
	for _, h := range upstreamHeaders {
		if v := r.Header.Values(h); len(v) > 0 {
			up.Header[h] = v
		}
	}
	up.Header.Set("Content-Type", "application/json")
	up.Header.Set(CorrelationHeader, ri.id)
	markReplayable(up.Header)
	tracing.Propagator.Inject(ctx, propagation.HeaderCarrier(up.Header))
	if rt.engineToken != "" {
		up.Header.Set("Authorization", "Bearer "+rt.engineToken)
	}

	// The first-byte clock covers headers (the transport's timeout) and
	// then the first body bytes; after that, the idle clock.
	timer := time.AfterFunc(rt.cfg.FirstByteTimeout, func() { cancel(errIdle) })
	defer timer.Stop()

	resp, err := rt.transport.RoundTrip(up)
	if err != nil {
		if r.Context().Err() != nil {
			return outcome{kind: outcomeDone}
		}
		rt.state.fault(inst.ID)
		label, reason := classify(err, context.Cause(ctx))
		return outcome{kind: outcomeRetry, reason: reason, label: label}
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		rt.state.fault(inst.ID)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		return outcome{kind: outcomeRetry, reason: "status " + strconv.Itoa(resp.StatusCode), label: "status_" + strconv.Itoa(resp.StatusCode)}
	}

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() { br.Reset(nil); readerPool.Put(br) }()

	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	var first []byte
	var evBuf []byte
	if sse {
		first, err = readEvent(br, evBuf[:0])
		evBuf = first
	} else {
		_, err = br.Peek(1)
	}
	if err != nil && !(err == io.EOF && len(first) == 0) {
		if r.Context().Err() != nil {
			return outcome{kind: outcomeDone}
		}
		rt.state.fault(inst.ID)
		label, reason := classify(err, context.Cause(ctx))
		return outcome{kind: outcomeRetry, reason: "before the first byte: " + reason, label: label}
	}

	// Commit: from here on a vanished instance breaks the stream instead of
	// being retried (the client has bytes already).
	unwatch()
	ri.instance, ri.node = inst.ID, inst.NodeID
	h := w.Header()
	for k, v := range resp.Header {
		if !hopHeaders[k] {
			h[k] = v
		}
	}
	h.Set(CorrelationHeader, ri.id)
	if sse {
		h.Del("Content-Length")
		h.Set("X-Accel-Buffering", "no") // tells nginx-style proxies in front not to buffer
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	rt.metrics.firstByte.WithLabelValues(pathLabel(r.URL.Path)).Observe(time.Since(start).Seconds())
	timer.Reset(rt.cfg.IdleStreamTimeout)

	var upErr error
	if sse {
		upErr = rt.relaySSE(w, rc, br, first, evBuf, timer)
	} else {
		upErr = rt.relayBody(w, br, timer)
	}
	clientGone := r.Context().Err() != nil
	switch {
	case upErr == nil && resp.StatusCode >= 500:
		// Passed through (the engine's own answer), but a fault.
		rt.state.fault(inst.ID)
	case upErr == nil:
		rt.state.success(inst.ID)
	case clientGone || errors.Is(upErr, errClientWrite):
		log().Debug("client went away; upstream request cancelled", "error", upErr)
		return outcome{kind: outcomeDone}
	default:
		rt.state.fault(inst.ID)
		_, reason := classify(upErr, context.Cause(ctx))
		log().Warn("engine failed mid-answer", "model", pr.Model, "reason", reason)
		if !sse {
			return outcome{kind: outcomeAbort}
		}
		rt.metrics.streamErrs.WithLabelValues(CodeWorkerReset).Inc()
		_, _ = w.Write(apierr.SSE(&apierr.Error{Status: http.StatusBadGateway, Code: CodeWorkerReset, Retriable: true,
			Message: "the engine failed mid-stream (" + reason + "); the answer is incomplete"}))
		_ = rc.Flush()
	}
	return outcome{kind: outcomeDone}
}

// errClientWrite marks a failed write to the client (it went away).
var errClientWrite = errors.New("writing to the client failed")

// relaySSE writes whole events only, flushing as soon as no further
// complete event is already buffered: every event reaches the client
// without waiting, and a burst costs one flush. A partial event left by a
// failing engine is dropped, so the error event that follows parses.
func (rt *Router) relaySSE(w io.Writer, rc *http.ResponseController, br *bufio.Reader, first, buf []byte, timer *time.Timer) error {
	ev := first
	for {
		if len(ev) > 0 {
			if _, err := w.Write(ev); err != nil {
				return fmt.Errorf("%w: %v", errClientWrite, err)
			}
			if !completeEventBuffered(br) {
				if err := rc.Flush(); err != nil {
					return fmt.Errorf("%w: %v", errClientWrite, err)
				}
			}
		}
		var err error
		ev, err = readEvent(br, buf[:0])
		buf = ev
		if err == io.EOF {
			if len(ev) > 0 { // the engine closed cleanly without a final blank line
				if _, err := w.Write(ev); err != nil {
					return fmt.Errorf("%w: %v", errClientWrite, err)
				}
			}
			_ = rc.Flush()
			return nil
		}
		if err != nil {
			return err
		}
		timer.Reset(rt.cfg.IdleStreamTimeout)
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

// relayBody copies a non-SSE answer.
func (rt *Router) relayBody(w io.Writer, br *bufio.Reader, timer *time.Timer) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	buf := *bp
	for {
		n, err := br.Read(buf)
		if n > 0 {
			timer.Reset(rt.cfg.IdleStreamTimeout)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("%w: %v", errClientWrite, werr)
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

// classify names an upstream failure for logs and a bounded metrics label.
func classify(err, cause error) (label, reason string) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(cause, errIdle):
		return "timeout", "timed out waiting for the engine"
	case errors.Is(cause, errInstanceGone):
		return "gone", errInstanceGone.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", "timed out: " + err.Error()
	case errors.As(err, &oe) && oe.Op == "dial":
		return "connect", "connect failed: " + err.Error()
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "reset", "connection closed by the engine"
	default:
		return "reset", err.Error()
	}
}
