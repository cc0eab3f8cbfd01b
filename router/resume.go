package router

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/resume"
)

// Mid-stream failover. A stream whose engine fails after the first byte
// (reset, EOF before the final event, idle timeout, the instance leaving
// the snapshot) is continued on another instance of the model: the
// resumer asks it for the rest of the answer, given the prompt and the
// tokens already sent, and the client's response goes on as if nothing
// happened. Engines whose adapter has no resumer end with today's error
// event.

// resumers maps an engine adapter name to how its streams are continued.
var resumers = map[string]func(*Router) streamResumer{
	"llamacpp": func(rt *Router) streamResumer { return resume.LlamaCpp{Client: rt.resumeClient} },
}

type streamResumer interface {
	Check(kind resume.Kind, body []byte) error
	Continue(ctx context.Context, c resume.Call, body []byte, s *resume.Stream, emit func([]byte) error) error
}

// resumable is what one request needs to be continued: the client's own
// body (the continuation is computed from it, not from what the router
// sent upstream) and the stream state the relay fills in.
type resumable struct {
	kind   resume.Kind
	body   []byte
	stream *resume.Stream
	cands  []registry.Instance // the placement's ranking
	tried  map[string]bool     // instance ids that already served or failed this request
}

// prepareResume returns the body to send upstream and the resume state,
// or the client's body unchanged and nil when the request will not be
// resumed (resume off, not a stream, or a request shape that cannot be
// continued exactly).
func (rt *Router) prepareResume(path string, body []byte, stream bool) ([]byte, *resumable) {
	if rt.cfg.ResumeAttempts <= 0 || !stream {
		return body, nil
	}
	kind, ok := resume.KindOf(path)
	if !ok {
		return body, nil
	}
	up, s, err := resume.Prepare(kind, body)
	if err != nil {
		return body, nil
	}
	return up, &resumable{kind: kind, body: body, stream: s}
}

// canResumeOn reports whether the instance's engine can continue the
// request.
func (rt *Router) canResumeOn(inst registry.Instance, rs *resumable) (streamResumer, bool) {
	mk, ok := resumers[inst.Engine]
	if !ok {
		return nil, false
	}
	r := mk(rt)
	return r, r.Check(rs.kind, rs.body) == nil
}

// resumeOutcome labels llorch_stream_resumes_total.
const (
	resumeOK         = "resumed"
	resumeFailed     = "failed"
	resumeNoInstance = "no_instance"
	resumeNotAllowed = "not_resumable"
	resumeClientGone = "client_gone"
)

// resumeStream continues a stream that broke on failed. It writes the rest
// of the answer to w and reports whether the client got a complete one;
// false means the caller ends the stream with the error event. cands is
// the placement's ranking in rs; instances already tried are skipped.
func (rt *Router) resumeStream(w http.ResponseWriter, r *http.Request, rs *resumable, ri *reqInfo, model, reason string) bool {
	log := ri.logger()
	if ok, why := rs.stream.Resumable(); !ok {
		rt.metrics.resumes.WithLabelValues(model, resumeNotAllowed).Inc()
		log.Warn("stream broke and cannot be resumed", "model", model, "reason", reason, "why", why)
		return false
	}
	rc := http.NewResponseController(w)
	for n := 0; n < rt.cfg.ResumeAttempts; n++ {
		inst, res, ok := rt.nextResumeInstance(rs)
		if !ok {
			rt.metrics.resumes.WithLabelValues(model, resumeNoInstance).Inc()
			log.Warn("stream broke; no other instance can continue it", "model", model, "reason", reason)
			return false
		}
		rs.tried[inst.ID] = true
		began := time.Now()
		sent := len(rs.stream.Tokens)
		err := rt.continueOn(r, inst, res, rs, func(ev []byte) error {
			if _, err := w.Write(ev); err != nil {
				return err
			}
			return rc.Flush()
		}, ri)
		switch {
		case err == nil:
			rt.metrics.resumes.WithLabelValues(model, resumeOK).Inc()
			log.Info("stream resumed on another instance", "model", model, "instance_id", inst.ID, "node_id", inst.NodeID,
				"reason", reason, "tokens_before", sent, "tokens_after", len(rs.stream.Tokens)-sent,
				"resume_ms", time.Since(began).Milliseconds())
			ri.instance, ri.node = inst.ID, inst.NodeID
			return true
		case resume.IsClient(err) || r.Context().Err() != nil:
			rt.metrics.resumes.WithLabelValues(model, resumeClientGone).Inc()
			return true // nobody left to tell
		default:
			rt.metrics.resumes.WithLabelValues(model, resumeFailed).Inc()
			log.Warn("resuming the stream failed", "model", model, "instance_id", inst.ID, "error", err)
			reason = err.Error()
			if ok, _ := rs.stream.Resumable(); !ok {
				return false
			}
		}
	}
	return false
}

// nextResumeInstance picks the best-ranked untried, non-ejected instance
// whose engine can continue the request, from the placement's ranking and
// then from the current snapshot (the ranking may be short or stale).
func (rt *Router) nextResumeInstance(rs *resumable) (registry.Instance, streamResumer, bool) {
	cands, tried := rs.cands, rs.tried
	try := func(list []registry.Instance, model string) (registry.Instance, streamResumer, bool) {
		for _, inst := range list {
			if tried[inst.ID] || rt.state.EjectedFor(inst.ID) > 0 || (model != "" && inst.Model != model) {
				continue
			}
			if inst.Health != "" && inst.Health != registry.HealthPassing {
				continue
			}
			if res, ok := rt.canResumeOn(inst, rs); ok {
				return inst, res, true
			}
		}
		return registry.Instance{}, nil, false
	}
	if inst, res, ok := try(cands, ""); ok {
		return inst, res, true
	}
	if len(cands) == 0 {
		return registry.Instance{}, nil, false
	}
	if snap := rt.view.Current(); snap != nil {
		return try(snap.Instances, cands[0].Model)
	}
	return registry.Instance{}, nil, false
}

// continueOn runs one continuation on inst with the router's timeouts: the
// first-byte clock until the first event, the idle clock after each, and
// the instance leaving the snapshot cancels it.
func (rt *Router) continueOn(r *http.Request, inst registry.Instance, res streamResumer, rs *resumable, emit func([]byte) error, ri *reqInfo) error {
	release := rt.state.acquire(inst.ID)
	defer release()
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	unwatch := rt.state.watchGone(inst.ID, cancel)
	defer unwatch()
	timer := time.AfterFunc(rt.cfg.FirstByteTimeout, func() { cancel(errIdle) })
	defer timer.Stop()

	hdr := http.Header{}
	hdr.Set(CorrelationHeader, ri.id)
	if rt.engineToken != "" {
		hdr.Set("Authorization", "Bearer "+rt.engineToken)
	}
	err := res.Continue(ctx, resume.Call{Base: inst.URL(), Header: hdr}, rs.body, rs.stream, func(ev []byte) error {
		timer.Reset(rt.cfg.IdleStreamTimeout)
		return emit(ev)
	})
	switch {
	case err == nil:
		rt.state.success(inst.ID)
	case resume.IsClient(err) || r.Context().Err() != nil:
	case errors.Is(err, resume.ErrNotResumable):
	default:
		var se *resume.StatusError
		if !errors.As(err, &se) || se.Status >= 500 {
			rt.state.fault(inst.ID)
		}
		if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
			return errors.Join(err, c)
		}
	}
	return err
}
