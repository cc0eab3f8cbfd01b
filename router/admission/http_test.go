package admission

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The 429 answer byte for byte: the headers clients back off on and the
// envelope SDKs parse.
func TestWriteHTTP429Exact(t *testing.T) {
	cases := []struct {
		err        *Error
		retryAfter string
		backoff    string
		body       string
	}{
		{
			err:        &Error{Status: 429, Code: CodeAdmissionReject, Message: "full", Retriable: true, RetryAfter: 1500 * time.Millisecond, PolicyLabel: "reject"},
			retryAfter: "2", backoff: "1500",
			body: `{"error":{"message":"full","type":"rate_limit_error","code":"ADMISSION_REJECT","param":null,"retriable":true,"retry_after_ms":1500}}`,
		},
		{
			err:        &Error{Status: 429, Code: CodeQueueFullDrop, Message: "dropped", Retriable: true, RetryAfter: 999 * time.Millisecond, PolicyLabel: "drop-lru"},
			retryAfter: "1", backoff: "999",
			body: `{"error":{"message":"dropped","type":"rate_limit_error","code":"QUEUE_FULL_DROP_LRU","param":null,"retriable":true,"retry_after_ms":999}}`,
		},
		{
			err:        &Error{Status: 429, Code: CodeAdmissionReject, Message: "full", Retriable: true, RetryAfter: 3000 * time.Millisecond, PolicyLabel: "reject"},
			retryAfter: "3", backoff: "3000",
			body: `{"error":{"message":"full","type":"rate_limit_error","code":"ADMISSION_REJECT","param":null,"retriable":true,"retry_after_ms":3000}}`,
		},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		c.err.WriteHTTP(w)
		if w.Code != 429 {
			t.Errorf("%s: status %d", c.err.Code, w.Code)
		}
		if got := w.Header().Get("Retry-After"); got != c.retryAfter {
			t.Errorf("%s: Retry-After %q, want %q", c.err.Code, got, c.retryAfter)
		}
		if got := w.Header().Get("X-Backoff-Ms"); got != c.backoff {
			t.Errorf("%s: X-Backoff-Ms %q, want %q", c.err.Code, got, c.backoff)
		}
		if got := w.Header().Get("Content-Type"); got != "application/json" {
			t.Errorf("%s: Content-Type %q", c.err.Code, got)
		}
		if got := w.Body.String(); got != c.body {
			t.Errorf("%s: body\n got %s\nwant %s", c.err.Code, got, c.body)
		}
	}
}

// What Enqueue returns on a full queue carries the 429 fields the router
// writes unchanged.
func TestEnqueueFullErrorFields(t *testing.T) {
	q := New(Config{Capacity: 1, Policy: Reject}, Hooks{})
	mustEnqueue(t, q, "m", Batch)
	_, err := q.Enqueue("m", Interactive)
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("err %v", err)
	}
	w := httptest.NewRecorder()
	ae.WriteHTTP(w)
	if w.Code != 429 || w.Header().Get("Retry-After") == "" || w.Header().Get("X-Backoff-Ms") == "" || ae.RetryAfter < time.Second {
		t.Errorf("429 without backoff: %d %v %+v", w.Code, w.Header(), ae)
	}
}

// Outcome hooks see every transition with its class, in order, and the
// depth gauge returns to zero when the queue drains.
func TestHooksOutcomesInOrder(t *testing.T) {
	var mu sync.Mutex
	var got []string
	var lastI, lastB int
	q := New(Config{Capacity: 2, Policy: DropLRU}, Hooks{
		Outcome: func(_ string, p Priority, o string) { mu.Lock(); got = append(got, p.String()+":"+o); mu.Unlock() },
		Depth:   func(i, b int) { lastI, lastB = i, b },
	})
	b := mustEnqueue(t, q, "m", Batch)
	i := mustEnqueue(t, q, "m", Interactive)
	n := mustEnqueue(t, q, "m", Interactive) // drops b
	if err := b.Wait(context.Background(), time.Time{}); err == nil {
		t.Fatal("b was not dropped")
	}
	q.Notify("m")
	i.Leave("admitted")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = n.Wait(ctx, time.Time{})
	want := []string{"batch:queued", "interactive:queued", "batch:dropped", "interactive:queued", "interactive:admitted", "interactive:canceled"}
	if len(got) != len(want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("outcomes %v, want %v", got, want)
		}
	}
	if lastI != 0 || lastB != 0 {
		t.Errorf("depth after drain %d/%d", lastI, lastB)
	}
}

// Many requests contend for a few slots the way the router uses the
// queue: enqueue when saturated, wait, try to take a slot, requeue when
// another took it, notify on finish. Everyone is served, the slots are
// never oversubscribed, and batch never starves interactive: with every
// request queued before the first slot frees, all interactive ones are
// admitted before the batch ones (at most `slots` batch admissions may
// race ahead of the last interactive one, through a recheck taking a slot
// a woken ticket was about to take).
func TestConcurrentContention(t *testing.T) {
	const slots, workers = 3, 60
	q := New(Config{Capacity: workers, Recheck: 20 * time.Millisecond}, Hooks{})
	var mu sync.Mutex
	busy, peak := 0, 0
	var order []Priority
	take := func(p Priority) bool {
		mu.Lock()
		defer mu.Unlock()
		if busy == slots {
			return false
		}
		busy++
		peak = max(peak, busy)
		order = append(order, p)
		return true
	}
	var served atomic.Int32
	var enqueued, wg sync.WaitGroup
	start := make(chan struct{})
	tickets := make([]*Ticket, workers)
	for k := 0; k < workers; k++ {
		p := Interactive
		if k%2 == 1 {
			p = Batch
		}
		tickets[k] = mustEnqueue(t, q, "m", p)
	}
	for k := 0; k < workers; k++ {
		wg.Add(1)
		enqueued.Add(1)
		go func(tk *Ticket) {
			defer wg.Done()
			enqueued.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for {
				if err := tk.Wait(ctx, time.Time{}); err != nil {
					t.Error(err)
					return
				}
				if take(tk.prio) {
					tk.Leave("admitted")
					break
				}
				tk.Requeue()
			}
			time.Sleep(time.Millisecond)
			mu.Lock()
			busy--
			mu.Unlock()
			served.Add(1)
			q.Notify("m")
		}(tickets[k])
	}
	enqueued.Wait()
	close(start)
	wg.Wait()
	if served.Load() != workers || peak > slots {
		t.Errorf("served %d of %d, peak %d slots of %d", served.Load(), workers, peak, slots)
	}
	if i, b := q.Depth("m"); i+b != 0 {
		t.Errorf("queue not empty: %d/%d", i, b)
	}
	lastInteractive, batchBefore := -1, 0
	for k, p := range order {
		if p == Interactive {
			lastInteractive = k
		}
	}
	for _, p := range order[:lastInteractive+1] {
		if p == Batch {
			batchBefore++
		}
	}
	if batchBefore > slots {
		t.Errorf("%d batch requests were admitted before the last interactive one (at most %d may race): %v", batchBefore, slots, order)
	}
}
