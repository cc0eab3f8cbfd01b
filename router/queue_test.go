package router

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

// oneSlot is a harness over one fixture instance with one slot, taken by
// a holder request that lasts until its ctx is cancelled (the test
// decides when the slot frees, so nothing depends on timing); the
// requests after it answer quickly.
func oneSlot(t *testing.T, mut func(*Config), hold context.Context) (*harness, *openaifixture.Server) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 100000, TokenDelay: 10 * time.Millisecond})
	in := inst(t, "a", "n1", testModel, u)
	in.Slots = 1
	h := newHarness(t, mut, in)
	h.send(hold, "holder", "interactive")
	waitFor(t, 5*time.Second, "the slot taken", func() bool { return h.rt.state.InFlight("a") == 1 && fx.InFlight() == 1 })
	fx.SetBehavior(openaifixture.Behavior{Tokens: 4})
	return h, fx
}

// send posts a chat request with a correlation id and priority in the
// background; the returned channel gets its status.
func (h *harness) send(ctx context.Context, id, prio string) <-chan int {
	done := make(chan int, 1)
	go func() {
		r := h.req("POST", "/v1/chat/completions", chatBody(testModel, true), CorrelationHeader, id, "X-Priority", prio).WithContext(ctx)
		resp, err := h.cl.Do(r)
		if err != nil {
			done <- 0
			return
		}
		readSSE(h.t, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	return done
}

func (h *harness) waitDepth(t *testing.T, interactive, batch int) {
	t.Helper()
	waitFor(t, 10*time.Second, "queue depth", func() bool {
		i, b := h.rt.queues.Depth(testModel)
		return i == interactive && b == batch
	})
}

// With the one slot busy, queued interactive i1, batch b1, interactive i2
// and then batch n1, n2 (arriving while others wait) reach the engine as
// i1, i2, b1, n1, n2: strict priority, then FIFO; nobody overtakes.
func TestQueueStrictPriorityThenFIFO(t *testing.T) {
	hold, release := context.WithCancel(context.Background())
	defer release()
	h, fx := oneSlot(t, func(c *Config) { c.QueueCapacity = 16 }, hold)
	ctx := context.Background()
	var done []<-chan int
	for k, s := range []struct {
		id, prio string
		i, b     int
	}{{"i1", "interactive", 1, 0}, {"b1", "batch", 1, 1}, {"i2", "interactive", 2, 1}, {"n1", "batch", 2, 2}, {"n2", "batch", 2, 3}} {
		done = append(done, h.send(ctx, s.id, s.prio))
		h.waitDepth(t, s.i, s.b)
		_ = k
	}
	release()
	for _, d := range done {
		if st := <-d; st != http.StatusOK {
			t.Fatalf("a queued request got %d", st)
		}
	}
	var got []string
	for _, s := range fx.Seen() {
		got = append(got, s.CorrelationID)
	}
	want := []string{"holder", "i1", "i2", "b1", "n1", "n2"}
	if len(got) != len(want) {
		t.Fatalf("engine order %v, want %v", got, want)
	}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("engine order %v, want %v", got, want)
		}
	}
}

// A request that waits past the queue timeout gets 429 with Retry-After.
func TestQueueTimeoutIs429WithRetryAfter(t *testing.T) {
	const queueTimeout = 300 * time.Millisecond
	fx, u := startFixture(t)
	// The holder outlasts the queue timeout many times over.
	fx.SetBehavior(openaifixture.Behavior{Tokens: 200, TokenDelay: 50 * time.Millisecond})
	in := inst(t, "a", "n1", testModel, u)
	in.Slots = 1
	h := newHarness(t, func(c *Config) { c.QueueTimeout = queueTimeout }, in)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.send(ctx, "holder", "interactive")
	waitFor(t, 5*time.Second, "the slot taken", func() bool { return h.rt.state.InFlight("a") == 1 })
	status, hdr, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if e := decodeErr(t, body); status != http.StatusTooManyRequests || e.Code != "DEADLINE_UNMET" || !e.Retriable || hdr.Get("Retry-After") == "" {
		t.Fatalf("%d %v %s", status, hdr, body)
	}
}

// Cancelling a queued request frees its place at once: with room for one
// waiter, the next request queues instead of being refused.
func TestCancelledWaiterFreesItsPlace(t *testing.T) {
	hold, cancelHold := context.WithCancel(context.Background())
	defer cancelHold()
	h, _ := oneSlot(t, func(c *Config) { c.QueueCapacity = 1 }, hold)
	wctx, cancelWaiter := context.WithCancel(context.Background())
	h.send(wctx, "w1", "interactive")
	h.waitDepth(t, 1, 0)
	cancelWaiter()
	h.waitDepth(t, 0, 0)
	next := h.send(context.Background(), "w2", "interactive")
	h.waitDepth(t, 1, 0) // queued, not refused
	cancelHold()
	if st := <-next; st != http.StatusOK {
		t.Fatalf("the request after the cancelled one got %d", st)
	}
}
