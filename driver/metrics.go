package driver

import (
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llorch/llorch/registry"
)

// DriverServiceName is the Consul service the driver's /metrics is
// registered under, for Prometheus's Consul service discovery.
const DriverServiceName = "llorch-driver"

// driverMetrics is the driver's Prometheus side: a /metrics listener
// (plugin config metrics_address) started at SetConfig by the long-lived
// plugin process only (the agent's validation launches send no
// nomad_config.driver) and registered in Consul with the node's node_id.
type driverMetrics struct {
	once     sync.Once
	reg      *prometheus.Registry
	ready    *prometheus.HistogramVec
	fpErrors *prometheus.CounterVec
	seen     sync.Map // *taskHandle → struct{}: readiness observed once
	started  sync.Map // *taskHandle → time.Time
}

// readyOnce records how long a task's engine took to become ready.
func (m *driverMetrics) readyOnce(h *taskHandle) {
	if m.ready == nil {
		return
	}
	if _, dup := m.seen.LoadOrStore(h, struct{}{}); dup {
		return
	}
	if t, ok := m.started.Load(h); ok {
		m.ready.WithLabelValues(h.NodeID(), h.EngineName()).Observe(time.Since(t.(time.Time)).Seconds())
	}
}

// taskLaunched notes a task's start for the readiness histogram.
func (m *driverMetrics) taskLaunched(h *taskHandle) { m.started.Store(h, time.Now()) }

// fingerprintError counts a GPU fingerprint that failed.
func (m *driverMetrics) fingerprintError(node string) {
	if m.fpErrors != nil {
		m.fpErrors.WithLabelValues(node).Inc()
	}
}

// startMetrics starts the listener once, if configured. It runs for the
// plugin process's lifetime (d.ctx).
func (d *Driver) startMetrics() {
	d.metrics.once.Do(func() {
		cfg := d.config()
		if cfg.MetricsAddress == "" {
			return
		}
		m := &d.metrics
		m.reg = prometheus.NewRegistry()
		m.ready = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricReadySeconds,
			Help:    "Engine start to ready and registered, per node and engine.",
			Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"node_id", "engine"})
		m.fpErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricFingerprintErrors,
			Help: "GPU fingerprints that failed (NVML errors, a lost GPU).",
		}, []string{"node_id"})
		m.reg.MustRegister(m.ready, m.fpErrors, &driverCollector{d: d})
		ln, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			d.log.Error("metrics listener", "address", cfg.MetricsAddress, "error", err)
			return
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		go func() { <-d.ctx.Done(); _ = srv.Close() }()
		d.log.Info("metrics listening", "address", ln.Addr().String())
		go d.registerMetricsService(ln.Addr().(*net.TCPAddr).Port)
	})
}

// nodeID is the node id the driver reports under.
func (d *Driver) nodeID() string {
	if id := d.config().NodeID; id != "" {
		return id
	}
	for _, h := range d.tasks.all() {
		return h.NodeID()
	}
	h, _ := os.Hostname()
	return h
}

// registerMetricsService registers /metrics in Consul as llorch-driver
// with meta node_id and an HTTP check, retrying until it works or the
// plugin stops (Consul may come up after the agent).
func (d *Driver) registerMetricsService(port int) {
	cfg := d.config()
	if cfg.Consul.Address == "" && os.Getenv("CONSUL_HTTP_ADDR") == "" {
		return
	}
	ccfg := consul.DefaultConfig()
	if cfg.Consul.Address != "" {
		ccfg.Address = cfg.Consul.Address
	}
	if cfg.Consul.TokenFile != "" {
		ccfg.TokenFile = cfg.Consul.TokenFile
	}
	if err := cfg.Consul.TLS().Apply(ccfg, 5*time.Second); err != nil {
		d.log.Warn("metrics: consul TLS", "error", err)
		return
	}
	cl, err := consul.NewClient(ccfg)
	if err != nil {
		d.log.Warn("metrics: consul client", "error", err)
		return
	}
	addr := cfg.AdvertiseAddress
	if addr == "" {
		addr = defaultAdvertise()
	}
	node := d.nodeID()
	reg := &consul.AgentServiceRegistration{
		ID: DriverServiceName + "-" + node, Name: DriverServiceName, Address: addr, Port: port,
		Meta: map[string]string{registry.MetaNodeID: node},
		Check: &consul.AgentServiceCheck{HTTP: "http://" + net.JoinHostPort(addr, strconv.Itoa(port)) + "/metrics",
			Interval: "10s", Timeout: "2s", DeregisterCriticalServiceAfter: "5m"},
	}
	for delay := time.Second; ; delay = min(delay*2, time.Minute) {
		err := cl.Agent().ServiceRegister(reg)
		if err == nil {
			d.log.Info("metrics registered in Consul", "service", DriverServiceName, "node_id", node)
			return
		}
		d.log.Warn("metrics: register in Consul", "error", err)
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// defaultAdvertise is the first non-loopback IPv4 address, else loopback.
func defaultAdvertise() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return "127.0.0.1"
}

const (
	metricReadySeconds      = "llorch_driver_engine_ready_seconds"
	metricFingerprintErrors = "llorch_driver_fingerprint_errors_total"
)

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames lists every series the driver's /metrics can serve; some
// appear only on a node with GPUs or after a failure. docs/monitoring.md is
// held to this list.
func MetricNames() []string {
	names := []string{metricReadySeconds, metricFingerprintErrors}
	ch := make(chan *prometheus.Desc, 16)
	go func() { (&driverCollector{}).Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// driverCollector reads the driver's state at scrape time.
type driverCollector struct{ d *Driver }

var (
	descTasks     = prometheus.NewDesc("llorch_driver_tasks", "Tasks this driver manages, by state (running, exited).", []string{"node_id", "state"}, nil)
	descEngines   = prometheus.NewDesc("llorch_driver_engines", "Engines by health as the driver's probes see them (passing, critical, starting).", []string{"node_id", "health"}, nil)
	descSlotsBusy = prometheus.NewDesc("llorch_engine_slots_busy", "Busy slots as the engine reports them.", []string{"node_id", "pool_id", "model"}, nil)
	descSlotsFree = prometheus.NewDesc("llorch_engine_slots_free", "Free slots as the engine reports them.", []string{"node_id", "pool_id", "model"}, nil)
	descQueue     = prometheus.NewDesc("llorch_engine_queue_length", "Requests waiting inside the engine.", []string{"node_id", "pool_id", "model"}, nil)
	descKV        = prometheus.NewDesc("llorch_engine_kv_cache_usage_ratio", "KV cache in use, 0..1.", []string{"node_id", "pool_id", "model"}, nil)
	descGPUUsed   = prometheus.NewDesc("llorch_gpu_memory_used_bytes", "GPU memory in use.", []string{"node_id", "gpu"}, nil)
	descGPUFree   = prometheus.NewDesc("llorch_gpu_memory_free_bytes", "GPU memory free.", []string{"node_id", "gpu"}, nil)
	descGPUTotal  = prometheus.NewDesc("llorch_gpu_memory_total_bytes", "GPU memory in all.", []string{"node_id", "gpu"}, nil)
	descGPUUtil   = prometheus.NewDesc("llorch_gpu_utilization_ratio", "GPU compute utilisation, 0..1.", []string{"node_id", "gpu"}, nil)
	descGPUs      = prometheus.NewDesc("llorch_gpus", "GPUs NVML reports on this node.", []string{"node_id"}, nil)
)

func (c *driverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTasks, descEngines, descSlotsBusy, descSlotsFree, descQueue, descKV, descGPUUsed, descGPUFree, descGPUTotal, descGPUUtil, descGPUs} {
		ch <- d
	}
}

func (c *driverCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	node := d.nodeID()
	states := map[string]int{"running": 0, "exited": 0}
	health := map[string]int{}
	for _, h := range d.tasks.all() {
		if h.isExited() {
			states["exited"]++
		} else {
			states["running"]++
		}
	}
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(n), node, s)
	}
	d.announcements.Range(func(k, v any) bool {
		h, a := k.(*taskHandle), v.(*announcement)
		ready, hl, _ := a.sup.State()
		key := string(hl)
		if !ready {
			key = "starting"
		}
		health[key]++
		l := a.sup.Load()
		if l.Known {
			model := h.Spec().ModelName
			ch <- prometheus.MustNewConstMetric(descSlotsBusy, prometheus.GaugeValue, float64(l.SlotsBusy), node, h.PoolID(), model)
			ch <- prometheus.MustNewConstMetric(descSlotsFree, prometheus.GaugeValue, float64(l.SlotsFree), node, h.PoolID(), model)
			ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(l.QueueLen), node, h.PoolID(), model)
			ch <- prometheus.MustNewConstMetric(descKV, prometheus.GaugeValue, l.KVCacheUsage, node, h.PoolID(), model)
		}
		return true
	})
	for hl, n := range health {
		ch <- prometheus.MustNewConstMetric(descEngines, prometheus.GaugeValue, float64(n), node, hl)
	}
	g := d.gpuInit()
	g.mu.Lock()
	snap := g.snap
	g.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descGPUs, prometheus.GaugeValue, float64(len(snap.GPUs)), node)
	for _, gpu := range snap.GPUs {
		idx := strconv.Itoa(gpu.Index)
		const mib = 1 << 20
		if gpu.MemoryUsedMiB != nil {
			ch <- prometheus.MustNewConstMetric(descGPUUsed, prometheus.GaugeValue, float64(*gpu.MemoryUsedMiB)*mib, node, idx)
		}
		if gpu.MemoryFreeMiB != nil {
			ch <- prometheus.MustNewConstMetric(descGPUFree, prometheus.GaugeValue, float64(*gpu.MemoryFreeMiB)*mib, node, idx)
		}
		if gpu.MemoryTotalMiB != nil {
			ch <- prometheus.MustNewConstMetric(descGPUTotal, prometheus.GaugeValue, float64(*gpu.MemoryTotalMiB)*mib, node, idx)
		}
		if gpu.GPUUtilPercent != nil {
			ch <- prometheus.MustNewConstMetric(descGPUUtil, prometheus.GaugeValue, float64(*gpu.GPUUtilPercent)/100, node, idx)
		}
	}
}
