package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/scheduler"
)

// The native /v2 task API (the predecessor's data plane): a task is
// submitted (202 with its queue position), runs when admitted, and its
// events — started, token, metrics, end, error — are kept in a bounded log
// so a client that connects late still reads the whole stream.

const (
	maxTasks        = 10000
	taskRetention   = 10 * time.Minute
	maxTaskTokens   = 32768
	codeCancelled   = "CANCELLED"
	codeTaskUnknown = "TASK_NOT_FOUND"
)

// TaskRequest is POST /v2/tasks's body.
type TaskRequest struct {
	TaskID      string            `json:"task_id"`
	SessionID   string            `json:"session_id"`
	ModelRef    string            `json:"model_ref"`
	Model       string            `json:"model"`
	Prompt      *string           `json:"prompt"`
	Messages    []json.RawMessage `json:"messages"`
	MaxTokens   int               `json:"max_tokens"`
	Priority    string            `json:"priority"`
	DeadlineMs  *int64            `json:"deadline_ms"`
	Temperature *float64          `json:"temperature"`
	Seed        *int64            `json:"seed"`
	Workload    string            `json:"workload"`
	Ctx         int               `json:"ctx"`
	Engine      string            `json:"engine"`
	Placement   *TaskPlacement    `json:"placement"`
}

// TaskPlacement is the request's placement block.
type TaskPlacement struct {
	Mode              string   `json:"mode"` // auto, pin, prefer
	PinNodeID         string   `json:"pin_node_id"`
	PinPoolID         string   `json:"pin_pool_id"`
	PreferPools       []string `json:"prefer_pools"`
	AvoidPools        []string `json:"avoid_pools"`
	RequireDeviceMask []string `json:"require_device_mask"`
	AllowFallback     *bool    `json:"allow_fallback"`
}

type taskEvent struct {
	name string
	data []byte
}

type task struct {
	id, model, corr string
	prio            admission.Priority
	cancel          context.CancelFunc
	created         time.Time

	mu       sync.Mutex
	events   []taskEvent
	changed  chan struct{}
	done     bool
	canceled bool
	finished time.Time
}

func (t *task) emit(name string, v any) {
	b, _ := json.Marshal(v)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done || (t.canceled && name != "error") {
		return // nothing after the end, and no token after a cancel
	}
	t.events = append(t.events, taskEvent{name, b})
	if name == "end" || name == "error" {
		t.done, t.finished = true, time.Now()
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

// since returns the events from index i on, whether the task is done, and
// a channel closed at the next change.
func (t *task) since(i int) ([]taskEvent, bool, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.events[min(i, len(t.events)):], t.done, t.changed
}

type taskStore struct {
	mu sync.Mutex
	m  map[string]*task
}

func newTaskStore() *taskStore { return &taskStore{m: map[string]*task{}} }

func (s *taskStore) get(id string) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

// add stores a task, first forgetting tasks finished longer than the
// retention ago; a full store refuses.
func (s *taskStore) add(t *task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.m[t.id]; dup {
		return fmt.Errorf("task_id %q is already in use", t.id)
	}
	if len(s.m) >= maxTasks {
		for id, old := range s.m {
			old.mu.Lock()
			stale := old.done && time.Since(old.finished) > taskRetention
			old.mu.Unlock()
			if stale {
				delete(s.m, id)
			}
		}
		if len(s.m) >= maxTasks {
			return errors.New("too many tasks")
		}
	}
	s.m[t.id] = t
	return nil
}

func badParam(w http.ResponseWriter, param, msg string) {
	apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: param, Message: msg})
}

// serveTaskSubmit handles POST /v2/tasks.
func (rt *Router) serveTaskSubmit(w http.ResponseWriter, r *http.Request) {
	ri := infoFrom(r.Context())
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.cfg.MaxBodyBytes))
	if err != nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusRequestEntityTooLarge, Code: CodeRequestTooLarge, Message: "request body too large or unreadable"})
		return
	}
	var tr TaskRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tr); err != nil {
		msg := err.Error()
		param := ""
		if i := strings.Index(msg, `unknown field "`); i >= 0 {
			param = strings.TrimSuffix(msg[i+len(`unknown field "`):], `"`)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			param = te.Field
		}
		badParam(w, param, "task request: "+strings.TrimPrefix(msg, "json: "))
		return
	}
	model := tr.Model
	if model == "" {
		model = tr.ModelRef
	}
	prio, perr := admission.ParsePriority(tr.Priority)
	switch {
	case model == "":
		badParam(w, "model_ref", `field "model_ref" (or "model") is required`)
		return
	case (tr.Prompt == nil) == (len(tr.Messages) == 0):
		badParam(w, "prompt", `give exactly one of "prompt" and "messages"`)
		return
	case tr.MaxTokens <= 0 || tr.MaxTokens > maxTaskTokens:
		badParam(w, "max_tokens", fmt.Sprintf(`field "max_tokens" must be 1..%d`, maxTaskTokens))
		return
	case perr != nil:
		badParam(w, "priority", perr.Error())
		return
	case tr.DeadlineMs != nil && *tr.DeadlineMs <= 0:
		apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: admission.CodeDeadlineUnmet, Param: "deadline_ms", Message: "deadline_ms must be positive: the deadline has already passed"})
		return
	}
	if tr.TaskID == "" {
		tr.TaskID = uuid.NewString()
	}
	path := "/v1/completions"
	if len(tr.Messages) > 0 {
		path = "/v1/chat/completions"
	}
	pr := PlaceRequest{Model: model, Path: path, Local: rt.state, Session: tr.SessionID, Placement: placementOf(tr.Placement)}
	if tr.Prompt != nil {
		pr.Prefix = []byte(*tr.Prompt)
	} else {
		pr.Prefix = promptPrefix(body)
	}
	// One placement now: errors that waiting cannot fix (unknown model, a
	// bad pin) are HTTP statuses; a busy fleet is a queue position.
	var ticket *admission.Ticket
	_, err = rt.placer.Place(pr, *rt.view.Current())
	var nc *NoCapacityError
	var se *scheduler.Error
	switch {
	case errors.As(err, &nc) && nc.Saturated:
		if ticket, err = rt.queues.Enqueue(model, prio); err != nil {
			var ae *admission.Error
			if errors.As(err, &ae) {
				ae.WriteHTTP(w)
				return
			}
		}
	case errors.As(err, &se):
		e := &apierr.Error{Status: se.Status, Code: se.Code, Message: se.Message, Retriable: se.Retriable, RetryAfter: retryAfter(se.Retriable)}
		if se.Code == scheduler.CodeModelNotAvailable {
			e.Param = "model_ref"
		}
		apierr.Write(w, e)
		return
	case errors.Is(err, ErrModelNotAvailable):
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: CodeModelNotAvailable, Param: "model_ref", Message: err.Error()})
		return
	case errors.As(err, &nc):
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodePoolUnavailable, Message: err.Error(), Retriable: true, RetryAfter: max(time.Millisecond, nc.RetryAfter)})
		return
	case err != nil:
		apierr.Write(w, &apierr.Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "placement failed"})
		return
	}

	ctx, cancel := context.WithCancel(context.Background()) // the task outlives the submit request
	var deadline time.Time
	if tr.DeadlineMs != nil {
		deadline = time.Now().Add(time.Duration(*tr.DeadlineMs) * time.Millisecond)
	}
	t := &task{id: tr.TaskID, model: model, corr: ri.id, prio: prio, cancel: cancel, created: time.Now(), changed: make(chan struct{})}
	if err := rt.tasks.add(t); err != nil {
		cancel()
		if ticket != nil {
			ticket.Leave("rejected")
		}
		status, code := http.StatusConflict, CodeInvalidParams
		if !strings.Contains(err.Error(), "in use") {
			status, code = http.StatusTooManyRequests, admission.CodeAdmissionReject
		}
		apierr.Write(w, &apierr.Error{Status: status, Code: code, Param: "task_id", Message: err.Error(), Retriable: status == 429, RetryAfter: time.Second})
		return
	}
	pos, predicted := 0, int64(0)
	if ticket != nil {
		pos, predicted = ticket.Position(), ticket.PredictedStartMs()
	}
	go rt.runTask(ctx, t, tr, pr, path, ticket, deadline, pos, predicted, ri.logger().With("task_id", t.id))
	writeJSON(w, http.StatusAccepted, map[string]any{
		"task_id": t.id, "queue_position": pos, "predicted_start_ms": predicted, "backoff_ms": 0,
		"streams": map[string]string{"sse": "/v2/tasks/" + t.id + "/events"},
	})
}

func placementOf(p *TaskPlacement) scheduler.Placement {
	if p == nil {
		return scheduler.Placement{AllowFallback: true}
	}
	sp := scheduler.Placement{PreferPools: p.PreferPools, AvoidPools: p.AvoidPools, RequireGPUs: p.RequireDeviceMask, AllowFallback: true}
	if p.AllowFallback != nil {
		sp.AllowFallback = *p.AllowFallback
	}
	if p.Mode == "pin" || p.PinNodeID != "" || p.PinPoolID != "" {
		sp.PinNode, sp.PinPool = p.PinNodeID, p.PinPoolID
	}
	return sp
}

// runTask executes a task: admission, placement, the engine's streaming
// endpoint, events.
func (rt *Router) runTask(ctx context.Context, t *task, tr TaskRequest, pr PlaceRequest, path string, ticket *admission.Ticket, deadline time.Time, pos int, predicted int64, log hclog.Logger) {
	defer t.cancel()
	start := time.Now()
	cands, err := rt.placeWithTicket(ctx, pr, t.prio, deadline, ticket)
	if err != nil {
		t.emit("error", errorEvent(err))
		return
	}
	defer func() { rt.finished(t.model, time.Since(start)) }()
	t.emit("started", map[string]any{"queue_position": pos, "predicted_start_ms": predicted, "instance_id": cands[0].ID, "node_id": cands[0].NodeID})

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
	body, _ := json.Marshal(reqBody)
	var failures []string
	for i, inst := range cands {
		if i > rt.cfg.Retries {
			break
		}
		release := rt.state.acquire(inst.ID)
		resp, err := rt.taskUpstream(ctx, inst, path, body, t.corr)
		if err != nil {
			release()
			if ctx.Err() != nil {
				break
			}
			failures = append(failures, inst.ID+": "+err.Error())
			log.Warn("task: instance failed before answering", "instance_id", inst.ID, "error", err)
			continue
		}
		rt.relayTask(ctx, t, resp, inst, time.Now())
		release()
		return
	}
	if ctx.Err() != nil {
		t.emit("error", map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false})
		return
	}
	t.emit("error", map[string]any{"code": CodeReplicaExhausted, "message": "no instance answered: " + strings.Join(failures, "; "), "retriable": true, "retry_after_ms": 1000})
}

func errorEvent(err error) map[string]any {
	var ae *admission.Error
	var se *scheduler.Error
	switch {
	case errors.As(err, &ae):
		return map[string]any{"code": ae.Code, "message": ae.Message, "retriable": ae.Retriable, "retry_after_ms": ae.RetryAfter.Milliseconds()}
	case errors.As(err, &se):
		return map[string]any{"code": se.Code, "message": se.Message, "retriable": se.Retriable}
	case errors.Is(err, context.Canceled):
		return map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false}
	}
	return map[string]any{"code": CodeInternal, "message": err.Error(), "retriable": true}
}

// taskUpstream opens the engine's stream; an error means nothing was
// received (retry on the next instance).
func (rt *Router) taskUpstream(ctx context.Context, inst registry.Instance, path string, body []byte, corr string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, inst.URL()+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set(CorrelationHeader, corr)
	markReplayable(req.Header)
	if rt.engineToken != "" {
		req.Header.Set("Authorization", "Bearer "+rt.engineToken)
	}
	resp, err := rt.transport.RoundTrip(req)
	if err != nil {
		rt.state.fault(inst.ID)
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			rt.state.fault(inst.ID)
		}
		return nil, fmt.Errorf("engine answered %d", resp.StatusCode)
	}
	return resp, nil
}

// relayTask turns the engine's OpenAI SSE stream into token events.
func (rt *Router) relayTask(ctx context.Context, t *task, resp *http.Response, inst registry.Instance, begin time.Time) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		data := bytes.TrimSpace(line[len("data:"):])
		if string(data) == "[DONE]" {
			break
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
		t.emit("token", map[string]any{"t": tok, "i": n})
		rt.metrics.tokensOut.Inc()
		n++
	}
	switch {
	case ctx.Err() != nil:
		t.emit("error", map[string]any{"code": codeCancelled, "message": "task cancelled", "retriable": false})
	case sc.Err() != nil:
		rt.state.fault(inst.ID)
		t.emit("error", map[string]any{"code": CodeWorkerReset, "message": "the engine failed mid-answer: " + sc.Err().Error(), "engine": inst.Engine, "retriable": true})
	default:
		rt.state.success(inst.ID)
		rt.metrics.decode.Observe(time.Since(begin).Seconds())
		ms := time.Since(begin).Milliseconds()
		t.emit("metrics", map[string]any{"instance_id": inst.ID, "node_id": inst.NodeID, "tokens_out": n})
		t.emit("end", map[string]any{"tokens_out": n, "decode_time_ms": ms, "decode_ms": ms})
	}
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
