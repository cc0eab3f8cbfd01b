package admission

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"
)

func mustEnqueue(t *testing.T, q *Queues, m string, p Priority) *Ticket {
	t.Helper()
	tk, err := q.Enqueue(m, p)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func woken(tk *Ticket) bool {
	select {
	case <-tk.wake:
		return true
	default:
		return false
	}
}

func TestPriorityAndFIFO(t *testing.T) {
	q := New(Config{Capacity: 10}, Hooks{})
	b1 := mustEnqueue(t, q, "m", Batch)
	i1 := mustEnqueue(t, q, "m", Interactive)
	b2 := mustEnqueue(t, q, "m", Batch)
	i2 := mustEnqueue(t, q, "m", Interactive)
	if i1.Position() != 0 || i2.Position() != 1 || b1.Position() != 0 || b2.Position() != 1 {
		t.Fatalf("positions %d %d %d %d", i1.Position(), i2.Position(), b1.Position(), b2.Position())
	}
	order := []*Ticket{i1, i2, b1, b2}
	for k, want := range order {
		q.Notify("m")
		if !woken(want) {
			t.Fatalf("notify %d woke the wrong ticket", k)
		}
		for _, other := range order[k+1:] {
			if woken(other) {
				t.Fatalf("notify %d woke more than one", k)
			}
		}
	}
	q.Notify("m") // empty: no panic
	q.Notify("unknown")
}

func TestRejectPolicy(t *testing.T) {
	q := New(Config{Capacity: 2, Policy: Reject}, Hooks{})
	mustEnqueue(t, q, "m", Interactive)
	mustEnqueue(t, q, "m", Batch)
	_, err := q.Enqueue("m", Interactive)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeAdmissionReject || ae.Status != 429 || ae.PolicyLabel != "reject" || !ae.Retriable {
		t.Fatalf("err = %+v", err)
	}
	// Queues are per model.
	mustEnqueue(t, q, "other", Interactive)
}

func TestDropLRUEvictsOldestBatchThenInteractive(t *testing.T) {
	q := New(Config{Capacity: 3, Policy: DropLRU}, Hooks{})
	i1 := mustEnqueue(t, q, "m", Interactive)
	b1 := mustEnqueue(t, q, "m", Batch)
	b2 := mustEnqueue(t, q, "m", Batch)
	n1 := mustEnqueue(t, q, "m", Interactive) // evicts b1
	err := b1.Wait(context.Background(), time.Time{})
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeQueueFullDrop || ae.PolicyLabel != "drop-lru" {
		t.Fatalf("b1: %v", err)
	}
	mustEnqueue(t, q, "m", Interactive) // evicts b2
	if err := b2.Wait(context.Background(), time.Time{}); !errors.As(err, &ae) {
		t.Fatalf("b2: %v", err)
	}
	mustEnqueue(t, q, "m", Batch) // no batch left: evicts the oldest interactive, i1
	if err := i1.Wait(context.Background(), time.Time{}); !errors.As(err, &ae) {
		t.Fatalf("i1: %v", err)
	}
	if n1.Position() != 0 {
		t.Errorf("n1 position %d", n1.Position())
	}
	if i, b := q.Depth("m"); i != 2 || b != 1 {
		t.Errorf("depth %d/%d", i, b)
	}
}

func TestWaitDeadlineCancelRecheckRequeue(t *testing.T) {
	q := New(Config{Recheck: 50 * time.Millisecond}, Hooks{})
	tk := mustEnqueue(t, q, "m", Interactive)
	err := tk.Wait(context.Background(), time.Now().Add(20*time.Millisecond))
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeDeadlineUnmet || tk.Position() != -1 {
		t.Fatalf("deadline: %v pos %d", err, tk.Position())
	}
	tk = mustEnqueue(t, q, "m", Interactive)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tk.Wait(ctx, time.Time{}); !errors.Is(err, context.Canceled) || tk.Position() != -1 {
		t.Fatalf("cancel: %v", err)
	}
	tk = mustEnqueue(t, q, "m", Interactive)
	start := time.Now()
	if err := tk.Wait(context.Background(), time.Time{}); err != nil || time.Since(start) > time.Second {
		t.Fatalf("recheck: %v after %v", err, time.Since(start))
	}
	if tk.Position() != 0 {
		t.Fatal("a recheck must keep the ticket queued")
	}
	other := mustEnqueue(t, q, "m", Interactive)
	q.Notify("m") // wakes tk
	tk.Requeue()  // lost the race: back to the front
	if tk.Position() != 0 || other.Position() != 1 {
		t.Fatalf("requeue: %d %d", tk.Position(), other.Position())
	}
	tk.Leave("admitted")
	if other.Position() != 0 {
		t.Fatal("leave did not remove the ticket")
	}
}

func TestWriteHTTP429(t *testing.T) {
	w := httptest.NewRecorder()
	(&Error{Status: 429, Code: CodeAdmissionReject, Message: "full", Retriable: true, RetryAfter: 1500 * time.Millisecond, PolicyLabel: "reject"}).WriteHTTP(w)
	if w.Code != 429 || w.Header().Get("Retry-After") != "2" || w.Header().Get("X-Backoff-Ms") != "1500" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	var body struct {
		Error struct {
			Code         string `json:"code"`
			Message      string `json:"message"`
			Retriable    bool   `json:"retriable"`
			RetryAfterMs int64  `json:"retry_after_ms"`
			Type         string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Error.Code != CodeAdmissionReject || !body.Error.Retriable || body.Error.RetryAfterMs != 1500 || body.Error.Type != "rate_limit_error" {
		t.Errorf("body %+v", body)
	}
	w = httptest.NewRecorder()
	(&Error{Status: 429, Code: CodeAdmissionReject, Retriable: true, RetryAfter: 200 * time.Millisecond}).WriteHTTP(w)
	if w.Header().Get("Retry-After") != "1" {
		t.Errorf("Retry-After must be at least 1 s: %q", w.Header().Get("Retry-After"))
	}
}

func TestPredictedStartAndHooks(t *testing.T) {
	var outcomes []string
	depth := map[Priority]int{}
	q := New(Config{}, Hooks{Outcome: func(_ string, p Priority, o string) { outcomes = append(outcomes, p.String()+":"+o) },
		Depth: func(i, b int) { depth[Interactive], depth[Batch] = i, b }})
	i := mustEnqueue(t, q, "m", Interactive)
	b := mustEnqueue(t, q, "m", Batch)
	if i.PredictedStartMs() != 100 || b.PredictedStartMs() != 200 {
		t.Errorf("predicted %d %d", i.PredictedStartMs(), b.PredictedStartMs())
	}
	if depth[Interactive] != 1 || depth[Batch] != 1 || len(outcomes) != 2 {
		t.Errorf("hooks: %v %v", depth, outcomes)
	}
	if _, err := ParsePriority("urgent"); err == nil {
		t.Error("bad priority accepted")
	}
}

// Waiting says whether a newcomer must queue: waiters of the same or a
// higher priority exist. A woken ticket still counts until it leaves, and
// one that leaves without placing hands its wake-up to the next.
func TestWaitingAndHandOn(t *testing.T) {
	q := New(Config{Capacity: 10}, Hooks{})
	if q.Waiting("m", Batch) {
		t.Fatal("empty queue: nothing waits")
	}
	b := mustEnqueue(t, q, "m", Batch)
	if q.Waiting("m", Interactive) || !q.Waiting("m", Batch) {
		t.Fatal("a batch waiter holds back batch newcomers only")
	}
	i1 := mustEnqueue(t, q, "m", Interactive)
	i2 := mustEnqueue(t, q, "m", Interactive)
	if !q.Waiting("m", Interactive) {
		t.Fatal("an interactive waiter holds back interactive newcomers")
	}
	q.Notify("m")
	if !woken(i1) || woken(i2) || woken(b) || !q.Waiting("m", Interactive) || i1.Position() != 0 {
		t.Fatal("the woken head keeps its place until it leaves")
	}
	i1.Leave("canceled") // gave up without placing: i2 gets the wake-up
	if !woken(i2) || woken(b) {
		t.Fatal("a cancelled woken ticket did not hand its wake-up on")
	}
	if i, _ := q.Depth("m"); i != 1 {
		t.Fatalf("the cancelled ticket still holds a place: %d interactive waiting", i)
	}
	i2.Leave("admitted")
	if woken(b) {
		t.Fatal("an admitted ticket used its wake-up: nothing to hand on")
	}
}
