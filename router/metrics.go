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
	resumes     *prometheus.CounterVec   // mid-stream continuations, by model and outcome
	firstByte   *prometheus.HistogramVec // time to the first byte sent to the client
	inFlight    prometheus.Gauge
	snapshotAge prometheus.GaugeFunc
	instances   prometheus.GaugeFunc

	admission  *prometheus.CounterVec // by priority, outcome
	queueDepth *prometheus.GaugeVec   // by priority
	placements *prometheus.CounterVec // by outcome
	candidates prometheus.Histogram   // instances looked at per decision
	tokensOut  prometheus.Counter     // /v2 task tokens relayed
	decode     prometheus.Histogram   // /v2 task decode time
	byNode     *nodeCollector         // node_id-labelled instance series
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
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llorch_stream_resumes_total",
			Help: "Streams whose engine failed after the first byte, by model and what the router did: resumed, failed, no_instance, not_resumable, client_gone.",
		}, []string{"model", "outcome"}),
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
	m.admission = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llorch_router_admission_total",
		Help: "Admission queue outcomes (queued, admitted, rejected, dropped, deadline, canceled), by priority.",
	}, []string{"priority", "outcome"})
	m.queueDepth = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "llorch_router_queue_depth",
		Help: "Requests waiting for a slot, over all models, by priority.",
	}, []string{"priority"})
	m.placements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llorch_router_placement_decisions_total",
		Help: "Scheduler decisions by outcome: chosen, saturated, or the error code.",
	}, []string{"outcome"})
	m.candidates = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "llorch_router_placement_candidates",
		Help:    "Instances the scheduler considered per decision.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 1024},
	})
	m.tokensOut = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "llorch_router_tokens_out_total",
		Help: "Tokens relayed to /v2 task streams.",
	})
	m.decode = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "llorch_router_decode_seconds",
		Help:    "Decode time of /v2 tasks, first token to end.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	})
	m.byNode = &nodeCollector{}
	for _, c := range []prometheus.Collector{m.requests, m.retries, m.ejections, m.streamErrs, m.resumes, m.firstByte, m.inFlight, m.snapshotAge, m.instances,
		m.admission, m.queueDepth, m.placements, m.candidates, m.tokensOut, m.decode, m.byNode} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// nodeCollector reports the current snapshot per node: instances by state
// and the router's in-flight requests to each node, labelled node_id (the
// registry's node ids: bounded by the fleet, unlike instance ids).
type nodeCollector struct {
	rt *Router
}

var (
	descInstances = prometheus.NewDesc("llorch_node_instances", "Engine instances in the router's view, by node and state.", []string{"node_id", "state"}, nil)
	descNodeLoad  = prometheus.NewDesc("llorch_node_in_flight_requests", "The router's in-flight requests to each node.", []string{"node_id"}, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descInstances; ch <- descNodeLoad }

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	if c.rt == nil {
		return
	}
	type key struct{ node, state string }
	counts := map[key]int{}
	load := map[string]int{}
	for _, in := range c.rt.view.Current().Instances {
		state := string(in.Health)
		if state == "" {
			state = "passing"
		}
		if in.Draining {
			state = "draining"
		}
		if c.rt.state.EjectedFor(in.ID) > 0 {
			state = "ejected"
		}
		counts[key{in.NodeID, state}]++
		load[in.NodeID] += c.rt.state.InFlight(in.ID)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(n), k.node, k.state)
	}
	for node, n := range load {
		ch <- prometheus.MustNewConstMetric(descNodeLoad, prometheus.GaugeValue, float64(n), node)
	}
}
