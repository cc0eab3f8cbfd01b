package router

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/accesslog"
)

// Per-request metrics through cached children: a CounterVec's
// WithLabelValues builds and hashes its label values every call (and the
// status needs formatting); the children are looked up here instead, in a
// copy-on-write map read without a lock. The label sets are bounded (path
// labels, known models, statuses), and the cache stops growing at
// maxCachedSeries regardless.
type seriesCache[K comparable, V any] struct {
	m atomic.Pointer[map[K]V]
}

const maxCachedSeries = 4096

func (c *seriesCache[K, V]) get(k K, build func() V) V {
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	v := build()
	for {
		old = c.m.Load()
		if old != nil && len(*old) >= maxCachedSeries {
			return v
		}
		next := copyMap(old)
		next[k] = v
		if c.m.CompareAndSwap(old, &next) {
			return v
		}
	}
}

func copyMap[K comparable, V any](old *map[K]V) map[K]V {
	if old == nil {
		return map[K]V{}
	}
	next := make(map[K]V, len(*old)+1)
	for k, v := range *old {
		next[k] = v
	}
	return next
}

type requestSeries struct {
	path, model string
	status      int
}

// requestCounter is llorch_requests_total{path,model,status}.
func (rt *Router) requestCounter(path, model string, status int) prometheus.Counter {
	return rt.reqSeries.get(requestSeries{path, model, status}, func() prometheus.Counter {
		return rt.metrics.requests.WithLabelValues(path, model, strconv.Itoa(status))
	})
}

// firstByteObserver is the first-byte histogram of a path label.
func (rt *Router) firstByteObserver(path string) prometheus.Observer {
	return rt.fbSeries.get(path, func() prometheus.Observer { return rt.metrics.firstByte.WithLabelValues(path) })
}

// SetAccessLog sends the per-request access lines to l (buffered; Run
// flushes it) instead of through the router's hclog logger. Call it before
// serving.
func (rt *Router) SetAccessLog(l *accesslog.Log) { rt.access = l }
