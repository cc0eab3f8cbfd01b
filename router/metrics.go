package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the router's Prometheus series. Every definition lives here so
// the observability work can extend one file.
type metrics struct {
	requests    *prometheus.CounterVec // by path, model, HTTP status
	retries     *prometheus.CounterVec // by reason
	ejections   prometheus.Counter
	streamErrs  *prometheus.CounterVec   // SSE error events sent, by code
	firstByte   *prometheus.HistogramVec // time to the first byte sent to the client
	inFlight    prometheus.Gauge
	snapshotAge prometheus.GaugeFunc
	instances   prometheus.GaugeFunc
}

// Label values for models the snapshot does not know, so a client cannot
// grow the series count by inventing model names.
const unknownModel = "_unknown"

func newMetrics(reg prometheus.Registerer, snapshotAgeSeconds, instances func() float64) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llorch_router_requests_total",
			Help: "Requests answered by the router, by path, model and HTTP status.",
		}, []string{"path", "model", "status"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llorch_router_retries_total",
			Help: "Requests moved to another instance after a failure before the first byte, by reason.",
		}, []string{"reason"}),
		// No instance label: instance ids change with every deployment,
		// and the log line of each ejection names the instance.
		ejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llorch_router_ejections_total",
			Help: "Passive ejections of instances after consecutive faults.",
		}),
		streamErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llorch_router_stream_errors_total",
			Help: "Streams ended with an SSE error event, by code.",
		}, []string{"code"}),
		firstByte: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llorch_router_first_byte_seconds",
			Help:    "Time from request arrival to the first response byte sent to the client.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"path"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llorch_router_in_flight_requests",
			Help: "Requests being proxied now.",
		}),
		snapshotAge: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llorch_router_snapshot_age_seconds",
			Help: "Time since discovery last heard from the registry (-1 before the first contact).",
		}, snapshotAgeSeconds),
		instances: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llorch_router_instances",
			Help: "Instances in the current snapshot.",
		}, instances),
	}
	for _, c := range []prometheus.Collector{m.requests, m.retries, m.ejections, m.streamErrs, m.firstByte, m.inFlight, m.snapshotAge, m.instances} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
