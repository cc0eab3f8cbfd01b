package consul

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/registry"
)

// Consul is a Source that follows one Consul service with blocking queries
// on the health endpoint, passing instances only (which also drops the
// services of nodes whose serfHealth failed).
type Watcher struct {
	Client  *consulapi.Client
	Service string // default registry.DefaultServiceName
	// WaitTime bounds one blocking query. A return without change still
	// counts as contact with Consul, so it is also the resolution of Age()
	// while nothing changes. Default 30s.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling pause after a
	// failed query. Defaults 200ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	Logger                 hclog.Logger
}

func (c *Watcher) defaults() (service string, wait, minB, maxB time.Duration, log hclog.Logger) {
	service, wait, minB, maxB, log = c.Service, c.WaitTime, c.MinBackoff, c.MaxBackoff, c.Logger
	if service == "" {
		service = registry.DefaultServiceName
	}
	if wait <= 0 {
		wait = 30 * time.Second
	}
	if minB <= 0 {
		minB = 200 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(10*time.Second, minB)
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return
}

// Watch implements registry.Source. fn is called after every successful
// query, including a blocking query that ended without change: that call
// carries the same snapshot again and tells the reader Consul is reachable.
// While Consul is unreachable fn is not called; Watch retries with bounded,
// jittered back-off until ctx ends, and returns ctx.Err().
func (c *Watcher) Watch(ctx context.Context, fn func(registry.Snapshot)) error {
	if c.Client == nil {
		return errors.New("discovery: Consul source without a client")
	}
	service, wait, minB, maxB, log := c.defaults()
	log = log.With("service", service)
	var (
		index    uint64
		backoff  = minB
		failures int
		badSeen  = map[string]string{} // instance id → last decode error logged
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait, AllowStale: true}).WithContext(ctx)
		entries, meta, err := c.Client.Health().Service(service, "", true, q)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			// Log the first failure and then every tenth, so an outage is
			// visible without flooding the log.
			if failures == 1 || failures%10 == 0 {
				log.Warn("consul query failed; serving the last snapshot", "failures", failures, "retry_in", backoff.String(), "error", err)
			}
			if !sleep(ctx, jitter(backoff)) {
				return ctx.Err()
			}
			backoff = min(backoff*2, maxB)
			// The server that answers next may be a restarted one whose
			// index is behind ours: a blocking query would then sit out
			// its whole wait time. Ask without blocking first.
			index = 0
			continue
		}
		if failures > 0 {
			log.Info("consul reachable again", "after_failures", failures)
		}
		failures, backoff = 0, minB

		list := make([]registry.Instance, 0, len(entries))
		seen := make(map[string]bool, len(entries))
		for _, e := range entries {
			inst, err := decode(e)
			if err != nil {
				id := ""
				if e.Service != nil {
					id = e.Service.ID
				}
				seen[id] = true
				if badSeen[id] != err.Error() {
					log.Warn("skipping registration that does not decode", "instance_id", id, "error", err)
					badSeen[id] = err.Error()
				}
				continue
			}
			list = append(list, inst)
		}
		for id := range badSeen {
			if !seen[id] {
				delete(badSeen, id)
			}
		}
		registry.Sort(list)
		fn(registry.Snapshot{Instances: list, Index: meta.LastIndex})

		// Consul's blocking-query rules: an index that goes backwards (a
		// restarted or restored server) resets the wait, and 0 is never
		// a valid wait index.
		switch next := meta.LastIndex; {
		case next < index:
			index = 0
		case next == 0:
			index = 1
		default:
			index = next
		}
	}
}

func decode(e *consulapi.ServiceEntry) (registry.Instance, error) {
	if e == nil || e.Service == nil {
		return registry.Instance{}, errors.New("entry without a service")
	}
	s := e.Service
	addr := s.Address
	var nodeID, nodeName string
	if e.Node != nil {
		if addr == "" {
			addr = e.Node.Address
		}
		nodeID, nodeName = e.Node.ID, e.Node.Node
	}
	if addr == "" || s.Port <= 0 {
		return registry.Instance{}, fmt.Errorf("instance %s: no address or port", s.ID)
	}
	inst, err := registry.FromRegistry(s.ID, s.Service, addr, s.Port, s.Tags, s.Meta, registry.Health(e.Checks.AggregatedStatus()))
	if err != nil {
		return registry.Instance{}, err
	}
	// Hand-made registrations may lack the node meta; Consul's own node
	// identity keeps the (node id, instance id) ordering meaningful.
	if inst.NodeID == "" {
		inst.NodeID = nodeID
	}
	if inst.NodeName == "" {
		inst.NodeName = nodeName
	}
	return inst, nil
}

// jitter spreads d over [d/2, d) so routers that lost Consul together do not
// come back in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(half)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
