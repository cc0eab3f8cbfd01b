// Package router is llorch's OpenAI-compatible front door: it authenticates
// clients, picks an engine instance for each request from the discovery
// snapshot (through a pluggable Placer), relays the answer (SSE event by
// event) and fails over before the first byte when an engine fails.
package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/accesslog"
	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/router/discovery"
	"github.com/llorch/llorch/router/engineclient"
	"github.com/llorch/llorch/router/enginestate"
	"github.com/llorch/llorch/router/keys"
	"github.com/llorch/llorch/scheduler"
)

// Router is one router process's state. Create it with New, serve Handler,
// and run Run for discovery.
type Router struct {
	cfg          Config
	source       registry.Source
	placer       Placer
	log          hclog.Logger
	view         *discovery.View
	state        *localState
	metrics      *metrics
	promReg      *prometheus.Registry
	transport    *http.Transport      // off the request path: engine polls, resume's calls
	engineCl     *engineclient.Client // the request path to engines (upstream.go)
	endpoints    endpointCache
	engineAuth   string       // "Bearer <engine token>", or empty
	resumeClient *http.Client // continues broken streams over the same connections
	tokens       *authmin.TokenSet
	engineToken  string
	handler      http.Handler
	queues       *admission.Queues
	tasks        *taskStore
	taskRuns     *taskGroup // the goroutines running /v2 tasks; Run stops them
	genTimeouts  map[string]time.Duration
	errors       recentErrors
	routes       modelRoutes         // aliases and fallbacks (aliases.go)
	demand       Demand              // nil: no scaling or on-demand loading
	readyBefore  map[string]bool     // models with a ready instance in the last snapshot (drainWoken)
	keys         *keys.Gate          // per-team keys; nil in single-token mode
	keysIndex    uint64              // the Consul KV index the keys were read at
	engines      *enginestate.Poller // nil when engine polling is off
	tls          routerTLS           // listener certificate, engine client side (tls.go)
	access       *accesslog.Log      // nil: access lines go through log
	reqSeries    seriesCache[requestSeries, prometheus.Counter]
	fbSeries     seriesCache[string, prometheus.Observer]
}

// New builds a router. source feeds the instance view (consul.Watcher in
// production, registry.Static in tests and the home profile); placer nil
// means the one cfg.SchedulerProfile names (the scheduler by default); reg is the registry /metrics serves (nil: a new
// one). It refuses a non-loopback cfg.Addr without an API token.
func New(cfg Config, source registry.Source, placer Placer, logger hclog.Logger, reg *prometheus.Registry) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if source == nil {
		return nil, errors.New("router: no instance source")
	}
	if placer == nil {
		p, err := PlacerFromConfig(cfg.SchedulerProfile)
		if err != nil {
			return nil, err
		}
		placer = p
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	rt := &Router{cfg: cfg, source: source, placer: placer, log: logger, view: discovery.NewView(), promReg: reg}
	rt.tasks = newTaskStore()
	rt.taskRuns = newTaskGroup()

	var err error
	if cfg.APITokenFile != "" {
		rt.tokens, err = authmin.LoadTokenSet(cfg.APITokenFile, "", cfg.TokenGrace, logger)
		if err != nil {
			return nil, fmt.Errorf("router: API token file: %w", err)
		}
	} else if cfg.APIToken != "" {
		rt.tokens = authmin.NewTokenSet(cfg.APIToken)
	} else {
		rt.tokens = authmin.NewTokenSet()
	}
	if rt.keys, err = newKeyGate(cfg, rt); err != nil {
		return nil, fmt.Errorf("router: API keys: %w", err)
	}
	// With per-team keys every request needs a key (or the token): a
	// non-loopback listener without the single token is then fine.
	if err := authmin.CheckBind(cfg.Addr, rt.tokens); err != nil && !(rt.keys != nil && rt.tokens.Empty()) {
		return nil, fmt.Errorf("router: %w", err)
	}
	if rt.tls, err = loadTLS(cfg); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if rt.routes, err = newModelRoutes(cfg.ModelAliases, cfg.ModelFallbacks); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	rt.engineToken = cfg.EngineToken
	if cfg.EngineTokenFile != "" {
		b, err := os.ReadFile(cfg.EngineTokenFile)
		if err != nil {
			return nil, fmt.Errorf("router: engine token file: %w", err)
		}
		rt.engineToken = strings.TrimSpace(string(b))
		if rt.engineToken == "" {
			return nil, fmt.Errorf("router: engine token file %s is empty", cfg.EngineTokenFile)
		}
	}
	if rt.engineToken != "" {
		rt.engineAuth = "Bearer " + rt.engineToken
	}
	if rt.engineToken == "" {
		logger.Warn("no engine token: requests reach engines without Authorization (engines must be reachable from the router only)")
	} else {
		logger.Info("engine token loaded", "engine_token", "token:"+authmin.TokenFP6(rt.engineToken))
	}

	rt.metrics, err = newMetrics(reg,
		func() float64 {
			if age := rt.view.Age(); age >= 0 {
				return age.Seconds()
			}
			return -1
		},
		func() float64 { return float64(len(rt.view.Current().Instances)) })
	if err != nil {
		return nil, fmt.Errorf("router: metrics: %w", err)
	}
	rt.metrics.byNode.rt = rt
	rt.queues = admission.New(admission.Config{Capacity: cfg.QueueCapacity, Policy: admission.Policy(cfg.QueuePolicy)}, admission.Hooks{
		Outcome: func(_ string, p admission.Priority, outcome string) {
			rt.metrics.admission.WithLabelValues(p.String(), outcome).Inc()
		},
		Depth: func(i, b int) {
			rt.metrics.queueDepth.WithLabelValues(admission.Interactive.String()).Set(float64(i))
			rt.metrics.queueDepth.WithLabelValues(admission.Batch.String()).Set(float64(b))
		},
	})
	if sp, ok := placer.(*SchedulerPlacer); ok {
		sp.OnDecision(func(d scheduler.Decision) {
			outcome := "chosen"
			switch {
			case d.Err != nil:
				outcome = d.Err.Code
			case d.Saturated:
				outcome = "saturated"
			}
			rt.metrics.placements.WithLabelValues(outcome).Inc()
			rt.metrics.candidates.Observe(float64(d.Considered))
		})
	}
	rt.genTimeouts, _ = cfg.generationTimeouts() // Validate checked it
	rt.state = newLocalState(outlierFromConfig(cfg), func(id string, d time.Duration) {
		rt.metrics.ejections.Inc()
		rt.log.Warn("instance ejected (outlier detection)", "instance_id", id, "for", d.String())
	})
	rt.state.onSkip = func(id string) {
		rt.log.Info("outlier kept in: the model's max-ejection share is reached", "instance_id", id)
	}
	rt.transport = newTransport(cfg)
	rt.transport.TLSClientConfig = rt.tls.engine // nil: system roots, for engines announcing tls=1
	engineTLS := rt.tls.engine
	rt.engineCl = engineclient.New(engineclient.Config{ConnectTimeout: cfg.ConnectTimeout, MaxIdlePerHost: cfg.MaxIdleConns,
		IdleTimeout: 4 * time.Second, TLS: func() *tls.Config { return engineTLS }})
	rt.resumeClient = &http.Client{Transport: rt.transport}
	rt.engines = rt.newEnginePoller()
	rt.handler = rt.buildHandler()
	return rt, nil
}

// newTransport is tuned for many long-lived streams to a few engines:
// a large keep-alive pool per host, HTTP/1.1 only (engines speak it, and a
// single HTTP/2 connection would multiplex every stream onto one TCP flow),
// and no transparent gzip, which would buffer SSE. Idle connections are
// dropped before the engines drop them (llama-server and uvicorn close idle
// connections after 5 s): reusing one the engine is closing fails a POST
// with "server closed idle connection", which net/http does not retry for
// non-idempotent requests, and every candidate can be stale at once.
func newTransport(cfg Config) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no global cap; the per-host cap bounds it
		MaxIdleConnsPerHost: cfg.MaxIdleConns,
		IdleConnTimeout:     4 * time.Second, // under the engines' keep-alive: see above
		// No ResponseHeaderTimeout: a non-streamed answer's headers come
		// when the whole answer is done. attempt times each phase itself.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
		Protocols:          http1Only(),
		// Small buffers: a router holds one per open stream, and at 1,000
		// streams 32 KiB ones were half its heap; requests and SSE events
		// are far smaller, and longer lines still pass (bufio grows reads).
		WriteBufferSize: 4 << 10,
		ReadBufferSize:  4 << 10,
	}
}

func http1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}

// Handler is the router's HTTP API.
func (rt *Router) Handler() http.Handler { return rt.handler }

// Ready reports whether discovery has delivered a first snapshot.
func (rt *Router) Ready() bool { return rt.view.Synced() }

// SnapshotAge is the time since discovery last heard from the registry
// (-1 before the first contact).
func (rt *Router) SnapshotAge() time.Duration { return rt.view.Age() }

// Snapshot is the current view of the instances (do not modify it).
func (rt *Router) Snapshot() *registry.Snapshot { return rt.view.Current() }

// Run owns the router's background work, discovery and API token reloads,
// until ctx ends; then it closes idle upstream connections and returns.
func (rt *Router) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if rt.cfg.APITokenFile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rt.tokens.Watch(ctx, rt.cfg.APITokenFile, rt.log)
		}()
	}
	rt.watchTLS(ctx, &wg)
	if rt.access != nil {
		wg.Add(1)
		go func() { defer wg.Done(); rt.access.Run(ctx) }()
	}
	if rt.engines != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rt.engines.Run(ctx)
		}()
	}
	rt.runKeys(ctx, func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() })
	last := -1
	err := rt.source.Watch(ctx, rt.onSnapshot(&last))
	rt.taskRuns.stop()
	wg.Wait()
	rt.transport.CloseIdleConnections()
	rt.engineCl.CloseIdle()
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// indexPreparer is a placer that builds per-snapshot state ahead of use.
type indexPreparer interface{ Prepare(registry.Snapshot) }

// onSnapshot takes each delivery off the request path: a delivery with
// Consul's index unchanged (a blocking query that timed out) only resets
// the age; a new one is normalized, the placer's index is built for it,
// and only then is it published, so requests always read a finished index.
func (rt *Router) onSnapshot(last *int) func(registry.Snapshot) {
	return func(s registry.Snapshot) {
		if cur := rt.view.Current(); rt.view.Synced() && s.Index != 0 && s.Index == cur.Index && len(s.Instances) == len(cur.Instances) {
			rt.view.Touch()
			return
		}
		snap := discovery.Normalize(s)
		if p, ok := rt.placer.(indexPreparer); ok {
			p.Prepare(*snap)
		}
		rt.view.Publish(snap)
		rt.state.sync(snap)
		rt.endpoints.forget(snap)
		rt.drainWoken(snap)
		if n := len(snap.Instances); n != *last {
			rt.log.Info("instance view changed", "instances", n, "index", snap.Index)
			*last = n
		}
	}
}

func (rt *Router) buildHandler() http.Handler {
	mux := http.NewServeMux()
	handle := func(method, path string, h http.HandlerFunc) { handleMethod(mux, method, path, h) }
	handle("GET", "/healthz", rt.serveHealth)
	handle("GET", "/metrics", promhttp.HandlerFor(rt.promReg, promhttp.HandlerOpts{}).ServeHTTP)
	for _, p := range proxiedPaths {
		mux.HandleFunc(p, rt.serveProxy)
	}
	mux.HandleFunc(pathMessages, rt.serveMessages)
	mux.HandleFunc(pathMessagesCountTokens, rt.serveMessages)
	mux.HandleFunc(pathResponses, rt.serveResponses)
	mux.HandleFunc(pathResponsesInputToks, rt.serveResponses)
	mux.HandleFunc("/v1/models", rt.serveModels)
	mux.HandleFunc("/v1/models/{model...}", rt.serveModel)
	handle("POST", "/v2/tasks", rt.serveTaskSubmit)
	handle("GET", "/v2/tasks/{id}/events", rt.serveTaskEvents)
	handle("POST", "/v2/tasks/{id}/cancel", rt.serveTaskCancel)
	handle("GET", "/v2/nodes", rt.serveNodes)
	handle("GET", "/v2/catalog/availability", rt.serveAvailability)
	handle("GET", "/v2/meta/capabilities", rt.serveCapabilities)
	handle("GET", "/v2/sd/prometheus", rt.servePrometheusSD)
	handle("GET", "/v2/ui/state", rt.serveUIState)
	handle("GET", "/ui", rt.serveUI)
	handle("GET", "/v2/usage", rt.serveUsage)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no endpoint " + r.Method + " " + r.URL.Path})
	})
	metricsAuth := rt.cfg.MetricsAuth
	authed := authmin.Middleware(authmin.MiddlewareConfig{
		Tokens:            rt.tokens,
		AuthOptional:      rt.cfg.AuthOptional,
		TrustForwardedFor: rt.cfg.TrustForwardedFor,
		Exempt: func(r *http.Request) bool {
			return r.URL.Path == "/healthz" || r.URL.Path == "/ui" || (r.URL.Path == "/metrics" && !metricsAuth)
		},
		Logger: rt.log,
		Keys:   rt.keyChecker(),
		Attach: attachAuth,
	}, mux)
	return rt.withRequestContext(withAnthropicErrors(authed))
}

// handleMethod serves path for one method and answers every other method
// with 405 in the error envelope (ServeMux's own 405 is plain text).
func handleMethod(mux *http.ServeMux, method, path string, h http.HandlerFunc) {
	mux.HandleFunc(method+" "+path, h)
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", method)
		apierr.Write(w, &apierr.Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed, Message: "use " + method + " on " + path})
	})
}

// Routes lists the method and path of every endpoint the router serves
// (the OpenAPI document's test holds it to this list).
func Routes() [][2]string {
	out := [][2]string{{"GET", "/healthz"}, {"GET", "/metrics"}, {"GET", "/v1/models"}, {"GET", "/v1/models/{model}"},
		{"POST", "/v2/tasks"}, {"GET", "/v2/tasks/{id}/events"}, {"POST", "/v2/tasks/{id}/cancel"},
		{"GET", "/v2/nodes"}, {"GET", "/v2/catalog/availability"}, {"GET", "/v2/meta/capabilities"}, {"GET", "/v2/sd/prometheus"}, {"GET", "/v2/ui/state"}, {"GET", "/ui"}, {"GET", "/v2/usage"}}
	for _, p := range append(proxiedPaths, agentPaths...) {
		out = append(out, [2]string{"POST", p})
	}
	return out
}

var proxiedPaths = []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
