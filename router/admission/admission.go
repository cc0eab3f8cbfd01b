// Package admission holds requests the scheduler could not place because
// every candidate of their model was busy: a bounded queue per model with
// two priority classes and a policy for a full queue — reject the
// newcomer, or drop the oldest waiter (batch first) to admit it.
//
// Order is strict priority, then FIFO: interactive before batch, and
// within a class the oldest first. A newcomer never overtakes a waiter of
// the same or higher priority (the router asks Waiting before it tries
// placement); the head of the queue is woken when a request of its model
// finishes (Notify) and stays counted as waiting until it has placed, so
// nothing slips in between. A waiter that gives up (cancelled, deadline)
// leaves at once, handing on a wake-up it had not used.
package admission

import (
	"container/list"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llorch/llorch/internal/apierr"
)

// Priority is a request's class.
type Priority int

const (
	Interactive Priority = iota
	Batch
)

func (p Priority) String() string {
	if p == Batch {
		return "batch"
	}
	return "interactive"
}

// ParsePriority reads "interactive" (default for "") or "batch".
func ParsePriority(s string) (Priority, error) {
	switch s {
	case "", "interactive":
		return Interactive, nil
	case "batch":
		return Batch, nil
	}
	return 0, fmt.Errorf("priority %q: want interactive or batch", s)
}

// Policy is what a full queue does with a newcomer.
type Policy string

const (
	Reject  Policy = "reject"
	DropLRU Policy = "drop-lru"
)

// Codes and their statuses.
const (
	CodeAdmissionReject = "ADMISSION_REJECT"    // 429, label reject
	CodeQueueFullDrop   = "QUEUE_FULL_DROP_LRU" // 429, label drop-lru: the evicted waiter
	CodeDeadlineUnmet   = "DEADLINE_UNMET"      // 400 before queueing; 429 + Retry-After for a waiter whose deadline (the queue timeout) passed
)

// Error is an admission outcome with everything its HTTP answer needs.
// PolicyLabel (reject, drop-lru) is the metrics label of the policy that
// produced it; the body carries Code, which says the same to a client.
type Error struct {
	Status      int
	Code        string
	Message     string
	Retriable   bool
	RetryAfter  time.Duration
	PolicyLabel string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// API is the error in the project's one HTTP error shape.
func (e *Error) API() *apierr.Error {
	return &apierr.Error{Status: e.Status, Code: e.Code, Message: e.Message, Retriable: e.Retriable, RetryAfter: e.RetryAfter}
}

// WriteHTTP writes the answer through apierr (the OpenAI envelope, and
// Retry-After in whole seconds ≥1 for a retriable error with a delay),
// plus X-Backoff-Ms: the same delay to the millisecond.
func (e *Error) WriteHTTP(w http.ResponseWriter) {
	if e.Retriable && e.RetryAfter > 0 {
		w.Header().Set("X-Backoff-Ms", strconv.FormatInt(max(1, e.RetryAfter.Milliseconds()), 10))
	}
	apierr.Write(w, e.API())
}

// Config sizes the queues.
type Config struct {
	// Capacity is how many requests may wait per model (default 8).
	Capacity int
	Policy   Policy // default reject
	// Recheck bounds a wait between placement attempts, so a wake-up lost
	// to a race never strands a waiter (default 250 ms).
	Recheck time.Duration
}

// Hooks let the router count outcomes without this package knowing
// Prometheus.
type Hooks struct {
	Outcome func(model string, p Priority, outcome string) // queued, admitted, rejected, dropped, deadline, canceled
	// Depth gets the waiters over all models per class after each change.
	// Hooks run under the queues' lock: they must not call back into Queues.
	Depth func(interactive, batch int)
}

// Queues are the per-model queues.
type Queues struct {
	cfg   Config
	hooks Hooks

	mu     sync.Mutex
	models map[string]*modelQueue
	// svcMs is a moving average of service time, for predicted start.
	svcMs float64
	// queued counts tickets in every queue (changed under mu, read
	// without it): with nothing queued, Waiting and Notify, which every
	// request calls, return without taking mu.
	queued atomic.Int64
}

type modelQueue struct {
	classes [2]*list.List // of *Ticket
}

// Ticket is one waiting request.
type Ticket struct {
	q     *Queues
	model string
	prio  Priority
	elem  *list.Element
	wake  chan struct{}
	woken bool   // Notify chose it; it has not placed yet
	err   *Error // set when evicted
}

// New makes empty queues.
func New(cfg Config, hooks Hooks) *Queues {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 8
	}
	if cfg.Policy == "" {
		cfg.Policy = Reject
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = 250 * time.Millisecond
	}
	return &Queues{cfg: cfg, hooks: hooks, models: map[string]*modelQueue{}, svcMs: 100}
}

func (q *Queues) queue(model string) *modelQueue {
	mq, ok := q.models[model]
	if !ok {
		mq = &modelQueue{classes: [2]*list.List{list.New(), list.New()}}
		q.models[model] = mq
	}
	return mq
}

func (mq *modelQueue) len() int { return mq.classes[0].Len() + mq.classes[1].Len() }

// Enqueue adds a request that could not be placed. A full queue answers by
// policy: reject → *Error ADMISSION_REJECT; drop-lru → the oldest batch
// waiter (else the oldest interactive one) is evicted with
// QUEUE_FULL_DROP_LRU and the newcomer admitted.
func (q *Queues) Enqueue(model string, p Priority) (*Ticket, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	mq := q.queue(model)
	if mq.len() >= q.cfg.Capacity {
		backoff := time.Duration(q.svcMs*float64(q.cfg.Capacity)) * time.Millisecond
		if q.cfg.Policy == Reject {
			q.outcome(model, p, "rejected")
			return nil, &Error{Status: http.StatusTooManyRequests, Code: CodeAdmissionReject, Retriable: true,
				RetryAfter: max(time.Second, backoff), PolicyLabel: string(Reject),
				Message: fmt.Sprintf("the queue for model %q is full (%d waiting)", model, mq.len())}
		}
		victimClass := mq.classes[Batch]
		vp := Batch
		if victimClass.Len() == 0 {
			victimClass, vp = mq.classes[Interactive], Interactive
		}
		victim := victimClass.Remove(victimClass.Front()).(*Ticket)
		victim.elem = nil
		q.queued.Add(-1)
		victim.err = &Error{Status: http.StatusTooManyRequests, Code: CodeQueueFullDrop, Retriable: true,
			RetryAfter: max(time.Second, backoff), PolicyLabel: string(DropLRU),
			Message: fmt.Sprintf("dropped from the full queue of model %q for a newer request", model)}
		if !victim.woken {
			victim.woken = true
			close(victim.wake)
		}
		q.outcome(model, vp, "dropped")
	}
	t := &Ticket{q: q, model: model, prio: p, wake: make(chan struct{})}
	t.elem = mq.classes[p].PushBack(t)
	q.queued.Add(1)
	q.outcome(model, p, "queued")
	q.depth(model, mq)
	return t, nil
}

// Notify wakes the first waiter of the model not already woken
// (interactive first, then FIFO): a request finished, so a slot may be
// free. The woken ticket keeps its place until it leaves.
func (q *Queues) Notify(model string) {
	if q.queued.Load() == 0 {
		return // nobody to wake (a ticket enqueued now re-checks placement first)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.notifyLocked(model)
}

func (q *Queues) notifyLocked(model string) {
	mq, ok := q.models[model]
	if !ok {
		return
	}
	for _, c := range mq.classes {
		for e := c.Front(); e != nil; e = e.Next() {
			if t := e.Value.(*Ticket); !t.woken {
				t.woken = true
				close(t.wake)
				return
			}
		}
	}
}

// Waiting reports whether a new request of priority p must queue behind
// waiters: any of the same or higher priority waits for model.
func (q *Queues) Waiting(model string, p Priority) bool {
	if q.queued.Load() == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	mq, ok := q.models[model]
	if !ok {
		return false
	}
	for c := Interactive; c <= p; c++ {
		if mq.classes[c].Len() > 0 {
			return true
		}
	}
	return false
}

// head reports whether t is first in line for its model. Called with
// q.mu held.
func (t *Ticket) head() bool {
	mq := t.q.models[t.model]
	if t.elem == nil || mq == nil {
		return false
	}
	for c := Interactive; c < t.prio; c++ {
		if mq.classes[c].Len() > 0 {
			return false
		}
	}
	return mq.classes[t.prio].Front() == t.elem
}

// Observe feeds a finished request's service time into the prediction.
func (q *Queues) Observe(d time.Duration) {
	q.mu.Lock()
	q.svcMs = 0.9*q.svcMs + 0.1*float64(d.Milliseconds())
	q.mu.Unlock()
}

// Position is the ticket's 0-based place within its class; -1 once it has
// left.
func (t *Ticket) Position() int {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	if t.elem == nil {
		return -1
	}
	n := 0
	for e := t.q.models[t.model].classes[t.prio].Front(); e != nil && e != t.elem; e = e.Next() {
		n++
	}
	return n
}

// PredictedStartMs estimates when the ticket will run: the waiters ahead
// of it (all interactive ones for a batch ticket) times the mean service
// time.
func (t *Ticket) PredictedStartMs() int64 {
	pos := t.Position()
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	ahead := pos + 1
	if t.prio == Batch {
		ahead += t.q.models[t.model].classes[Interactive].Len()
	}
	return int64(float64(ahead) * t.q.svcMs)
}

// Wait blocks until the ticket is woken (try placement again), evicted
// (its *Error), ctx ends (it leaves at once), the deadline passes
// (DEADLINE_UNMET, 429 + Retry-After), or, for the head of the queue,
// Recheck elapses (try again anyway: a wake-up lost to a race never
// strands it). Only a nil return means "place again".
func (t *Ticket) Wait(ctx context.Context, deadline time.Time) error {
	var dl <-chan time.Time
	if !deadline.IsZero() {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		dl = timer.C
	}
	recheck := time.NewTicker(t.q.cfg.Recheck)
	defer recheck.Stop()
	t.q.mu.Lock()
	wake := t.wake
	t.q.mu.Unlock()
	for {
		select {
		case <-wake:
			if t.err != nil {
				return t.err
			}
			return nil
		case <-recheck.C:
			t.q.mu.Lock()
			head := t.head()
			t.q.mu.Unlock()
			if head {
				return nil
			}
		case <-dl:
			retry := time.Duration(t.PredictedStartMs()) * time.Millisecond
			t.Leave("deadline")
			return &Error{Status: http.StatusTooManyRequests, Code: CodeDeadlineUnmet, Retriable: true, RetryAfter: max(time.Second, retry),
				Message: fmt.Sprintf("the queue timeout passed while waiting for model %q", t.model)}
		case <-ctx.Done():
			t.Leave("canceled")
			return ctx.Err()
		}
	}
}

// Requeue re-arms a woken ticket that lost the freed slot to another
// request: it keeps its place (the front) and waits for the next wake-up.
func (t *Ticket) Requeue() {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	if t.err != nil {
		return
	}
	if t.woken {
		t.woken = false
		t.wake = make(chan struct{})
	}
	if t.elem == nil {
		mq := t.q.queue(t.model)
		t.elem = mq.classes[t.prio].PushFront(t)
		t.q.queued.Add(1)
		t.q.depth(t.model, mq)
	}
}

// Leave removes the ticket (placed, canceled or timed out). A ticket that
// was woken and leaves without placing hands the wake-up on.
func (t *Ticket) Leave(outcome string) {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	if t.elem != nil {
		mq := t.q.models[t.model]
		mq.classes[t.prio].Remove(t.elem)
		t.elem = nil
		t.q.queued.Add(-1)
		t.q.depth(t.model, mq)
		if t.woken && outcome != "admitted" {
			t.q.notifyLocked(t.model)
		}
	}
	t.q.outcome(t.model, t.prio, outcome)
}

// TotalDepth is the number of waiters over all models, per class.
func (q *Queues) TotalDepth() (interactive, batch int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, mq := range q.models {
		interactive += mq.classes[Interactive].Len()
		batch += mq.classes[Batch].Len()
	}
	return
}

// Depth is the number of waiters of a model per class.
func (q *Queues) Depth(model string) (interactive, batch int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if mq, ok := q.models[model]; ok {
		return mq.classes[Interactive].Len(), mq.classes[Batch].Len()
	}
	return 0, 0
}

func (q *Queues) outcome(model string, p Priority, o string) {
	if q.hooks.Outcome != nil {
		q.hooks.Outcome(model, p, o)
	}
}

func (q *Queues) depth(_ string, _ *modelQueue) {
	if q.hooks.Depth == nil {
		return
	}
	var i, b int
	for _, mq := range q.models {
		i += mq.classes[Interactive].Len()
		b += mq.classes[Batch].Len()
	}
	q.hooks.Depth(i, b)
}
