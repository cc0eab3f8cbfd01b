package router

import (
	"sync/atomic"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/engineclient"
)

// endpointCache keeps each instance's dial address, built once instead of
// per request. It is copied on write: lookups on the request path take no
// lock, and a miss (an instance the cache has not seen) adds it.
type endpointCache struct {
	m atomic.Pointer[map[endpointKey]engineclient.Endpoint]
}

type endpointKey struct {
	addr string
	port int
	tls  bool
}

func (c *endpointCache) of(in registry.Instance) engineclient.Endpoint {
	k := endpointKey{in.Address, in.Port, in.TLS}
	m := c.m.Load()
	if m != nil {
		if ep, ok := (*m)[k]; ok {
			return ep
		}
	}
	ep := engineclient.NewEndpoint(in.Address, in.Port, in.TLS)
	for {
		old := c.m.Load()
		var next map[endpointKey]engineclient.Endpoint
		if old == nil {
			next = map[endpointKey]engineclient.Endpoint{}
		} else {
			if len(*old) >= maxCachedEndpoints {
				return ep // a churning registry: stop growing, build per call
			}
			next = make(map[endpointKey]engineclient.Endpoint, len(*old)+1)
			for k, v := range *old {
				next[k] = v
			}
		}
		next[k] = ep
		if c.m.CompareAndSwap(old, &next) {
			return ep
		}
	}
}

// forget drops the endpoints of instances no longer in snap (called with
// each snapshot, off the request path).
func (c *endpointCache) forget(snap *registry.Snapshot) {
	live := make(map[endpointKey]bool, len(snap.Instances))
	for _, in := range snap.Instances {
		live[endpointKey{in.Address, in.Port, in.TLS}] = true
	}
	for {
		old := c.m.Load()
		if old == nil {
			return
		}
		next := make(map[endpointKey]engineclient.Endpoint, len(live))
		for k, v := range *old {
			if live[k] {
				next[k] = v
			}
		}
		if c.m.CompareAndSwap(old, &next) {
			return
		}
	}
}

// maxCachedEndpoints bounds the cache between snapshots.
const maxCachedEndpoints = 1 << 16
