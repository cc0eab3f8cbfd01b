package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/router/engineclient"
	"github.com/llorch/llorch/scheduler"
)

// A task's run: admission, placement, the engine's streaming endpoint
// through the same upstream path /v1 takes (relay), its answer turned into
// task events; and the endpoints that read and cancel it.

// runTask executes a task.
func (rt *Router) runTask(ctx context.Context, t *task, tr TaskRequest, pr PlaceRequest, path string, ticket *admission.Ticket, deadline time.Time, pos int, predicted int64, log hclog.Logger) {
	defer t.cancel()
	defer func() { t.key.end(ctx.Err() != nil) }()
	start := time.Now()
	reqBody := map[string]any{"model": t.model, "max_tokens": tr.MaxTokens, "stream": true}
	if tr.Prompt != nil {
		reqBody["prompt"] = *tr.Prompt
	} else {
		reqBody["messages"] = tr.Messages
	}
	if tr.Temperature != nil {
		reqBody["temperature"] = *tr.Temperature
	}
	if tr.Seed != nil {
		reqBody["seed"] = *tr.Seed
	}
	if t.key != nil {
		reqBody["stream_options"] = map[string]any{"include_usage": true} // the key is charged what it used
	}
	body, _ := json.Marshal(reqBody)
	call := &upstreamCall{model: t.model, path: path, body: body, stream: true, ri: &reqInfo{id: t.corr, base: log}, start: start, key: t.key}
	if deadline.IsZero() {
		deadline = start.Add(rt.cfg.QueueTimeout)
	}
	started := false
	for {
		cands, err := rt.placeWithTicket(ctx, pr, t.prio, deadline, ticket)
		ticket = nil
		if err != nil {
			t.emit("error", errorEvent(err))
			return
		}
		t.key.wasPlaced()
		if !started {
			t.emit("started", map[string]any{"queue_position": pos, "predicted_start_ms": predicted, "instance_id": cands[0].ID, "node_id": cands[0].NodeID})
			started = true
		}
		res := rt.relayTask(ctx, t, call, cands)
		switch {
		case res.again && ctx.Err() == nil:
			continue // every instance tried left the registry: place again
		case res.busyFor > 0 && time.Now().Add(res.busyFor).Before(deadline):
			continue // every instance said "not now": place again, which queues
		case res.busyFor > 0:
			t.emit("error", apiEvent(&apierr.Error{Code: CodeEnginesBusy, Message: "every instance of the model is busy", Retriable: true, RetryAfter: res.busyFor}))
		case ctx.Err() != nil:
			t.emit("error", map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false})
		case res.err != nil:
			t.emit("error", apiEvent(res.err))
		}
		return
	}
}

// relayTask runs the upstream call with the task's event log as the sink.
func (rt *Router) relayTask(ctx context.Context, t *task, call *upstreamCall, cands []registry.Instance) relayResult {
	began := time.Now()
	defer func() { rt.finished(t.model, time.Since(began)) }()
	return rt.relay(ctx, call, cands, &taskSink{rt: rt, t: t, ctx: ctx})
}

// apiEvent is an error as a task's error event.
func apiEvent(e *apierr.Error) map[string]any {
	m := map[string]any{"code": e.Code, "message": e.Message, "retriable": e.Retriable}
	if e.Retriable && e.RetryAfter > 0 {
		m["retry_after_ms"] = e.RetryAfter.Milliseconds()
	}
	return m
}

func errorEvent(err error) map[string]any {
	var ae *admission.Error
	var se *scheduler.Error
	switch {
	case errors.As(err, &ae):
		return apiEvent(ae.API())
	case errors.As(err, &se):
		return map[string]any{"code": se.Code, "message": se.Message, "retriable": se.Retriable}
	case errors.Is(err, context.Canceled):
		return map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false}
	}
	return map[string]any{"code": CodeInternal, "message": err.Error(), "retriable": true}
}

// errTaskRefused ends an attempt whose answer a task cannot use (the
// engine's own error answer): it is reported, not retried.
var errTaskRefused = errors.New("the engine refused the task")

// taskSink turns the engine's OpenAI SSE stream into token events.
type taskSink struct {
	rt    *Router
	t     *task
	ctx   context.Context
	n     int
	begin time.Time
}

func (s *taskSink) commit(resp *engineclient.Response, sse bool) error {
	s.begin = time.Now()
	if resp.StatusCode == http.StatusOK && sse {
		return nil
	}
	// A 4xx (or a 500 passed through) is the engine's answer to this
	// task: reported as it is, never re-run elsewhere.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	code := CodeEngineError
	if resp.StatusCode == http.StatusOK {
		code = CodeWorkerReset
	}
	s.t.emit("error", map[string]any{"code": code, "status": resp.StatusCode, "retriable": resp.StatusCode >= 500,
		"message": fmt.Sprintf("the engine answered %d: %s", resp.StatusCode, bytes.TrimSpace(b))})
	return errTaskRefused
}

func (s *taskSink) event(ev []byte, _ bool) error {
	for _, line := range bytes.Split(ev, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		data := bytes.TrimSpace(line[len("data:"):])
		if string(data) == "[DONE]" {
			return nil
		}
		var chunk struct {
			Choices []struct {
				Text  string `json:"text"`
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal(data, &chunk) != nil || len(chunk.Choices) == 0 {
			continue
		}
		tok := chunk.Choices[0].Delta.Content + chunk.Choices[0].Text
		if tok == "" {
			continue
		}
		s.t.emit("token", map[string]any{"t": tok, "i": s.n})
		s.rt.metrics.tokensOut.Inc()
		s.n++
	}
	return nil
}

func (s *taskSink) chunk([]byte) error { return nil }

func (s *taskSink) end(inst registry.Instance) error {
	if s.ctx.Err() != nil {
		return s.ctx.Err()
	}
	took := time.Since(s.begin)
	s.rt.metrics.decode.Observe(took.Seconds())
	s.t.emit("metrics", map[string]any{"instance_id": inst.ID, "node_id": inst.NodeID, "tokens_out": s.n})
	s.t.emit("end", map[string]any{"tokens_out": s.n, "decode_time_ms": took.Milliseconds(), "decode_ms": took.Milliseconds()})
	return nil
}

func (s *taskSink) broken(inst registry.Instance, reason string, _ bool) outcomeKind {
	s.t.emit("error", map[string]any{"code": CodeWorkerReset, "message": "the engine failed mid-answer: " + reason, "engine": inst.Engine, "retriable": true})
	return outcomeDone
}

// serveTaskEvents handles GET /v2/tasks/{id}/events: the whole event log
// from the start, then live events until the end.
func (rt *Router) serveTaskEvents(w http.ResponseWriter, r *http.Request) {
	t := rt.tasks.get(r.PathValue("id"))
	if t == nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: codeTaskUnknown, Message: "no task " + r.PathValue("id")})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	next := 0
	for {
		evs, done, changed := t.since(next)
		for _, e := range evs {
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.name, e.data)
		}
		next += len(evs)
		if err := rc.Flush(); err != nil {
			return
		}
		if done {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// serveTaskCancel handles POST /v2/tasks/{id}/cancel: 204, and no token
// event after it; the stream ends with error CANCELLED.
func (rt *Router) serveTaskCancel(w http.ResponseWriter, r *http.Request) {
	t := rt.tasks.get(r.PathValue("id"))
	if t == nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: codeTaskUnknown, Message: "no task " + r.PathValue("id")})
		return
	}
	t.mu.Lock()
	t.canceled = true
	t.mu.Unlock()
	t.cancel()
	t.emit("error", map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false})
	w.WriteHeader(http.StatusNoContent)
}
