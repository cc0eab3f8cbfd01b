package scaler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the scaler's series (router metrics are in router/).
type metrics struct {
	desired *prometheus.GaugeVec   // pool
	actions *prometheus.CounterVec // pool, reason
	leader  *prometheus.GaugeVec   // pool
}

// MetricNames lists the scaler's series (docs/monitoring.md is held to it).
var MetricNames = []string{"llorch_pool_desired", "llorch_pool_scale_actions_total", "llorch_pool_leader"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "llorch_pool_desired",
			Help: "Replicas Nomad is asked to run for a pool (its engine group's count), as last read or set."}, []string{"pool"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llorch_pool_scale_actions_total",
			Help: "Scale requests this router made, by pool and reason (wake, queueing, busy, idle, min)."}, []string{"pool", "reason"}),
		leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "llorch_pool_leader",
			Help: "1 while this router holds a pool's scaling lock (makes its up and down decisions)."}, []string{"pool"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.desired, m.actions, m.leader} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("scaler metrics: %w", err)
			}
		}
	}
	return m, nil
}
