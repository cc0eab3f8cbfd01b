package router

import (
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

	"github.com/llorch/llorch/internal/apierr"
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
	key             *keyUse // the API key's hold (nil: no key); only runTask touches it after submit
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
	// One JSON object and nothing after it (Decode alone stops after the
	// first value; FuzzV2TaskBody found trailing bytes accepted).
	if _, err := dec.Token(); err != io.EOF {
		badParam(w, "", "task request: the body must be one JSON object with nothing after it")
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
	ku, ok := rt.admitKey(w, r, model, &prio)
	if !ok {
		return
	}
	started := false
	defer func() {
		if !started {
			ku.end(false) // refused after admission: costs nothing
		}
	}()
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
	if e := rt.notSynced(); e != nil {
		apierr.Write(w, e)
		return
	}
	// One placement now: errors that waiting cannot fix (unknown model, a
	// bad pin) are HTTP statuses; a busy fleet is a queue position.
	var ticket *admission.Ticket
	_, err = rt.placer.Place(pr, *rt.view.Current())
	var nc *NoCapacityError
	var se *scheduler.Error
	switch {
	case errors.As(err, &nc) && nc.Saturated, err == nil && rt.queues.Waiting(model, prio):
		// Saturated, or others wait already (a task never overtakes a
		// waiting request of the same or higher priority): queue.
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

	ctx, cancel := context.WithCancel(rt.taskRuns.context()) // the task outlives the submit request, not the router
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
	t.key = ku
	log := ri.logger().With("task_id", t.id)
	if started = rt.taskRuns.goTask(func() { rt.runTask(ctx, t, tr, pr, path, ticket, deadline, pos, predicted, log) }); !started {
		cancel()
		if ticket != nil {
			ticket.Leave("rejected")
		}
		apierr.Write(w, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeInternal, Message: "the router is shutting down", Retriable: true, RetryAfter: time.Second})
		return
	}
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
