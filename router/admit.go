package router

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
)

// placeAdmitted places a request; while every candidate of its model is
// busy (saturated) it waits in the model's admission queue, which may
// reject it (429) or, under drop-lru, evict it for a newer request.
func (rt *Router) placeAdmitted(ctx context.Context, pr PlaceRequest, prio admission.Priority, deadline time.Time) ([]registry.Instance, error) {
	return rt.placeWithTicket(ctx, pr, prio, deadline, nil)
}

// placeWithTicket is placeAdmitted for a request that may already hold a
// queue ticket (a /v2 task queued when it was submitted).
func (rt *Router) placeWithTicket(ctx context.Context, pr PlaceRequest, prio admission.Priority, deadline time.Time, t *admission.Ticket) (cands []registry.Instance, err error) {
	if rt.demand != nil {
		rt.demand.Begin(pr.Model)
		defer func() {
			if err != nil {
				rt.demand.End(pr.Model) // a placed request ends in finished
			}
		}()
	}
	if t == nil && rt.queues.Waiting(pr.Model, prio) {
		// Strict priority, then FIFO: a new request never overtakes a
		// waiting one of the same or higher priority, even when a slot
		// looks free to it (it is the head's).
		if t, err = rt.queues.Enqueue(pr.Model, prio); err != nil {
			return nil, err
		}
	}
	if t != nil {
		if err := t.Wait(ctx, deadline); err != nil {
			return nil, err
		}
	}
	for {
		cands, err = rt.placer.Place(pr, *rt.view.Current())
		if err == nil {
			// Instances whose engine said "not now" (429, 503 +
			// Retry-After) are full until then: if that is all of them,
			// the request queues like any saturated one.
			if cands = rt.notBusy(cands); len(cands) == 0 {
				err = &NoCapacityError{Model: pr.Model, RetryAfter: time.Second, Saturated: true}
			}
		}
		var nc *NoCapacityError
		// No ready instance but Demand is bringing one (a pool at zero, a
		// model not loaded): wait in the queue as if every slot were busy.
		waking := rt.wakeable(pr.Model, err) && rt.demand.Wake(pr.Model)
		if !waking && (!errors.As(err, &nc) || !nc.Saturated) {
			if t != nil {
				t.Leave("admitted")
			}
			return cands, err
		}
		if t == nil {
			if t, err = rt.queues.Enqueue(pr.Model, prio); err != nil {
				return nil, err
			}
		} else {
			t.Requeue() // the slot went elsewhere: keep the place, wait again
		}
		if tracing.Enabled() {
			_, span := tracer.Start(ctx, "llorch.admission.wait", trace.WithAttributes(attribute.String("llorch.priority", prio.String())))
			err = t.Wait(ctx, deadline)
			span.End()
		} else {
			err = t.Wait(ctx, deadline)
		}
		if err != nil {
			return nil, err
		}
	}
}

// notBusy drops the candidates inside an engine-given Retry-After.
func (rt *Router) notBusy(cands []registry.Instance) []registry.Instance {
	for i, c := range cands {
		if rt.state.BusyFor(c.ID) == 0 {
			continue
		}
		// The first busy one: copy the rest without the busy ones (the
		// placer's slice is not ours to edit).
		out := append(make([]registry.Instance, 0, len(cands)-1), cands[:i]...)
		for _, c := range cands[i+1:] {
			if rt.state.BusyFor(c.ID) == 0 {
				out = append(out, c)
			}
		}
		return out
	}
	return cands
}

// finished tells the model's queue a slot may be free.
func (rt *Router) finished(model string, took time.Duration) {
	if rt.demand != nil {
		rt.demand.End(model)
	}
	rt.queues.Observe(took)
	rt.queues.Notify(model)
}

// priorityOf reads X-Priority (interactive by default).
func priorityOf(r *http.Request) (admission.Priority, error) {
	return admission.ParsePriority(r.Header.Get("X-Priority"))
}
