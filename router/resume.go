package router

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/engineclient"
	"github.com/llorch/llorch/router/resume"
)

// Mid-stream failover. A stream whose engine fails after the first byte
// (reset, EOF before the final event, idle timeout, the instance leaving
// the snapshot) is continued on another instance of the model: the
// resumer asks it for the rest of the answer, given the prompt and the
// tokens already sent, and the client's response (a /v1 stream or a /v2
// task's token events) goes on as if nothing happened. Engines whose
// adapter has no resumer end with the error event as before.

// resumers maps an engine adapter name to how its streams are continued.
var resumers = map[string]func(*Router) streamResumer{
	"llamacpp": func(rt *Router) streamResumer { return resume.LlamaCpp{Client: rt.resumeClient} },
}

type streamResumer interface {
	Check(kind resume.Kind, body []byte) error
	Continue(ctx context.Context, c resume.Call, body []byte, s *resume.Stream, emit func([]byte) error) error
}

// Outcomes of llorch_stream_resumes_total.
const (
	resumeOK         = "resumed"
	resumeFailed     = "failed"
	resumeNoInstance = "no_instance"
	resumeNotAllowed = "not_resumable"
	resumeClientGone = "client_gone"
)

// errEndedEarly: the engine closed a stream before its final event.
var errEndedEarly = errors.New("the engine ended the stream before its final event")

// resumingSink wraps the sink of a resumable stream: events pass through
// the stream's filter (which records text and token ids and strips the
// logprobs the router asked for), an engine that ends the stream before its
// final event counts as broken, and a break is continued on another
// instance before the inner sink hears of it.
type resumingSink struct {
	sink
	rt     *Router
	ctx    context.Context
	call   *upstreamCall
	kind   resume.Kind
	body   []byte // the client's own request: the continuation is computed from it
	stream *resume.Stream
	cands  []registry.Instance // the placement's ranking
	tried  map[string]bool     // instances that served or failed this request
}

// withResume returns the call and sink relay uses: unchanged when resume is
// off or the request is not a chat or completion stream; for streams that
// cannot be continued exactly (several choices, client-chosen logprobs) a
// sink that only counts their breaks; else the upstream body asking for
// token ids and a resumingSink.
func (rt *Router) withResume(ctx context.Context, call *upstreamCall, cands []registry.Instance, s sink) sink {
	call.wire = nil
	if rt.cfg.ResumeAttempts <= 0 || !call.stream {
		return s
	}
	kind, ok := resume.KindOf(call.path)
	if !ok {
		return s
	}
	up, st, err := resume.Prepare(kind, call.body)
	if err != nil {
		return &unresumableSink{sink: s, rt: rt, model: call.model}
	}
	call.wire = up
	return &resumingSink{sink: s, rt: rt, ctx: ctx, call: call, kind: kind, body: call.body, stream: st, cands: cands}
}

// errResumedElsewhere aborts a broken engine's call once its stream goes
// on elsewhere.
var errResumedElsewhere = errors.New("stream resumed on another instance")

// resumesOnGone: a resumable stream is broken (and continued) as soon as
// its instance leaves the registry.
func (s *resumingSink) resumesOnGone() bool { return true }

func (s *resumingSink) commit(resp *engineclient.Response, sse bool) error {
	return s.sink.commit(resp, sse)
}

func (s *resumingSink) event(ev []byte, more bool) error {
	return s.sink.event(s.stream.Filter(ev), more)
}

func (s *resumingSink) end(inst registry.Instance) error {
	if !s.stream.Finished() {
		return errEndedEarly
	}
	return s.sink.end(inst)
}

func (s *resumingSink) broken(inst registry.Instance, reason string, sse bool) outcomeKind {
	if !sse {
		return s.sink.broken(inst, reason, sse)
	}
	if s.tried == nil {
		s.tried = map[string]bool{} // made on the first break: most streams never have one
	}
	s.tried[inst.ID] = true
	// The failed engine's connection is closed at once, so it stops
	// generating and frees its slot while the answer goes on elsewhere.
	s.call.engine.Abort(errResumedElsewhere)
	if next, ok := s.rt.resumeStream(s, reason); ok {
		_ = s.sink.end(next)
		return outcomeDone
	}
	if s.ctx.Err() != nil {
		return outcomeDone
	}
	return s.sink.broken(inst, reason, sse)
}

// unresumableSink counts breaks of streams resume could not take on.
type unresumableSink struct {
	sink
	rt    *Router
	model string
}

func (s *unresumableSink) broken(inst registry.Instance, reason string, sse bool) outcomeKind {
	if sse {
		s.rt.metrics.resumes.WithLabelValues(s.model, resumeNotAllowed).Inc()
	}
	return s.sink.broken(inst, reason, sse)
}

// resumeStream continues the broken stream of s on the next instance that
// can, up to resume-attempts times, writing the continuation through the
// inner sink. It returns the instance that finished the answer.
func (rt *Router) resumeStream(s *resumingSink, reason string) (registry.Instance, bool) {
	log, model := s.call.ri.logger(), s.call.model
	if ok, why := s.stream.Resumable(); !ok {
		rt.metrics.resumes.WithLabelValues(model, resumeNotAllowed).Inc()
		log.Warn("stream broke and cannot be resumed", "model", model, "reason", reason, "why", why)
		return registry.Instance{}, false
	}
	for n := 0; n < rt.cfg.ResumeAttempts; n++ {
		inst, res, ok := rt.nextResumeInstance(s)
		if !ok {
			rt.metrics.resumes.WithLabelValues(model, resumeNoInstance).Inc()
			log.Warn("stream broke; no other instance can continue it", "model", model, "reason", reason)
			return registry.Instance{}, false
		}
		s.tried[inst.ID] = true
		began := time.Now()
		sent := len(s.stream.Tokens)
		err := rt.continueOn(s.ctx, s.call, inst, res, s.body, s.stream, func(ev []byte) error { return s.sink.event(ev, false) })
		switch {
		case err == nil:
			rt.metrics.resumes.WithLabelValues(model, resumeOK).Inc()
			log.Info("stream resumed on another instance", "model", model, "instance_id", inst.ID, "node_id", inst.NodeID,
				"reason", reason, "tokens_before", sent, "tokens_after", len(s.stream.Tokens)-sent,
				"resume_ms", time.Since(began).Milliseconds())
			s.call.ri.instance, s.call.ri.node = inst.ID, inst.NodeID
			return inst, true
		case resume.IsClient(err) || s.ctx.Err() != nil:
			rt.metrics.resumes.WithLabelValues(model, resumeClientGone).Inc()
			return registry.Instance{}, false
		default:
			rt.metrics.resumes.WithLabelValues(model, resumeFailed).Inc()
			log.Warn("resuming the stream failed", "model", model, "instance_id", inst.ID, "error", err)
			reason = err.Error()
			if ok, _ := s.stream.Resumable(); !ok {
				return registry.Instance{}, false
			}
		}
	}
	return registry.Instance{}, false
}

// nextResumeInstance picks the best-ranked untried instance that is not
// ejected or busy and whose engine can continue the request, from the
// placement's ranking and then from the current snapshot (the ranking may
// be short or stale).
func (rt *Router) nextResumeInstance(s *resumingSink) (registry.Instance, streamResumer, bool) {
	try := func(list []registry.Instance) (registry.Instance, streamResumer, bool) {
		for _, inst := range list {
			if s.tried[inst.ID] || inst.Model != s.call.model || rt.state.EjectedFor(inst.ID) > 0 || rt.state.BusyFor(inst.ID) > 0 {
				continue
			}
			if inst.Health != "" && inst.Health != registry.HealthPassing {
				continue
			}
			mk, ok := resumers[inst.Engine]
			if !ok {
				continue
			}
			if res := mk(rt); res.Check(s.kind, s.body) == nil {
				return inst, res, true
			}
		}
		return registry.Instance{}, nil, false
	}
	if inst, res, ok := try(s.cands); ok {
		return inst, res, true
	}
	if snap := rt.view.Current(); snap != nil {
		return try(snap.Instances)
	}
	return registry.Instance{}, nil, false
}

// continueOn runs one continuation on inst with the router's timeouts: the
// first-byte clock until the first event, the idle clock after each; the
// instance leaving the snapshot cancels it. Outlier accounting as for any
// attempt: a gateway failure counts, the engine's own 4xx does not.
func (rt *Router) continueOn(ctx context.Context, call *upstreamCall, inst registry.Instance, res streamResumer, body []byte, st *resume.Stream, emit func([]byte) error) error {
	release := rt.state.acquire(inst.ID)
	defer release()
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	is := rt.state.get(inst.ID)
	w := cancelWatcher(cancel)
	is.watchGone(&w)
	defer is.unwatchGone(&w)
	timer := time.AfterFunc(rt.cfg.FirstByteTimeout, func() { cancel(errFirstByte) })
	defer timer.Stop()

	hdr := http.Header{}
	hdr.Set(CorrelationHeader, call.ri.id)
	markReplayable(hdr)
	if rt.engineToken != "" {
		hdr.Set("Authorization", "Bearer "+rt.engineToken)
	}
	err := res.Continue(cctx, resume.Call{Base: inst.URL(), Header: hdr}, body, st, func(ev []byte) error {
		timer.Reset(rt.cfg.IdleStreamTimeout)
		return emit(ev)
	})
	switch {
	case err == nil:
		rt.state.success(inst.ID)
	case resume.IsClient(err) || ctx.Err() != nil, errors.Is(err, resume.ErrNotResumable):
	default:
		var se *resume.StatusError
		if !errors.As(err, &se) || se.Status >= 500 {
			rt.state.gatewayFailure(inst.ID)
		}
		if c := context.Cause(cctx); c != nil && !errors.Is(c, context.Canceled) {
			return errors.Join(err, c)
		}
	}
	return err
}
