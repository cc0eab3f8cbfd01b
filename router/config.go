package router

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/internal/tlsfiles"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
)

// Config is everything the router can be told. The fields that come from
// flags and the environment are listed once, in Options; the flag parser,
// the environment reader and the configuration reference all read that table.
type Config struct {
	Addr              string
	APITokenFile      string
	AuthOptional      bool
	TrustForwardedFor bool
	EngineTokenFile   string
	ConsulAddr        string
	ConsulTokenFile   string
	ConsulCAFile      string
	ConsulCertFile    string
	ConsulKeyFile     string
	ServiceName       string
	MaxBodyBytes      int64
	MetricsAuth       bool
	Retries           int
	ResumeAttempts    int
	RetryBudget       time.Duration
	ConnectTimeout    time.Duration
	FirstByteTimeout  time.Duration
	IdleStreamTimeout time.Duration
	// GenerationTimeout bounds a non-streamed answer (headers come only
	// when it is done); GenerationTimeoutPerModel overrides it per model
	// ("model=duration,…").
	GenerationTimeout         time.Duration
	GenerationTimeoutPerModel string
	ClientWriteTimeout        time.Duration
	EjectAfter                int
	EjectMaxPercent           int
	EjectSuccessRatePercent   int
	EjectSuccessRateMinReqs   int
	SlowStart                 time.Duration
	EjectBackoff              time.Duration
	EjectBackoffMax           time.Duration
	DegradedAfter             time.Duration
	MaxIdleConns              int
	TokenGrace                time.Duration
	LogLevel                  string
	LogJSON                   bool
	SchedulerProfile          string
	EnginePoll                time.Duration
	EngineStaleAfter          time.Duration
	QueueCapacity             int
	QueuePolicy               string
	QueueTimeout              time.Duration
	OTLPEndpoint              string
	DrainTimeout              time.Duration
	ModelAliases              string
	ModelFallbacks            string
	// Pools that follow demand (router/scaler); NomadAddr "" = off.
	NomadAddr         string
	NomadTokenFile    string
	NomadNamespace    string
	ScaleInterval     time.Duration
	ScaleSustain      time.Duration
	ScaleUpCooldown   time.Duration
	ScaleDownCooldown time.Duration
	ScaleBusyPercent  int
	KeysFile          string
	KeysConsulPrefix  string
	RouterService     string
	// TLS on the listener (both files, or neither) and to engines.
	TLSCertFile    string
	TLSKeyFile     string
	TLSMinVersion  string
	AllowPlaintext bool
	EngineCAFile   string
	EngineCertFile string
	EngineKeyFile  string

	// Resolved at start-up from the files above (see cli/router.go); not
	// options themselves, so secrets never pass through flags.

	// APIToken is the client token from LLORCH_API_TOKEN when no file is
	// given (environment only: a flag would show in `ps`).
	APIToken string
	// EngineToken is presented to engines as "Authorization: Bearer".
	EngineToken string
	// Consul is the router's Consul client: it reads keys under
	// KeysConsulPrefix and counts the live routers that share each key's
	// limits. nil: neither (one router, keys from the file only).
	Consul *consulapi.Client
	// KeyWindow is the window of the keys' rpm and tpm limits: a minute
	// (zero). Tests shorten it; the limits then count per KeyWindow.
	KeyWindow time.Duration
}

// Option is one configuration setting: its flag, its environment variable,
// its default and what it does.
type Option struct {
	Flag    string
	Env     string
	Default string
	Help    string
	IsBool  bool
	set     func(c *Config, v string) error
	get     func(c *Config) string
}

func strOpt(flag, env, def, help string, p func(*Config) *string) Option {
	return Option{Flag: flag, Env: env, Default: def, Help: help,
		set: func(c *Config, v string) error { *p(c) = v; return nil },
		get: func(c *Config) string { return *p(c) }}
}

func boolOpt(flag, env, def, help string, p func(*Config) *bool) Option {
	return Option{Flag: flag, Env: env, Default: def, Help: help, IsBool: true,
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("want true or false, got %q", v)
			}
			*p(c) = b
			return nil
		},
		get: func(c *Config) string { return strconv.FormatBool(*p(c)) }}
}

func intOpt(flag, env, def, help string, min int64, p func(*Config) *int) Option {
	return Option{Flag: flag, Env: env, Default: def, Help: help,
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < min {
				return fmt.Errorf("want an integer >= %d, got %q", min, v)
			}
			*p(c) = int(n)
			return nil
		},
		get: func(c *Config) string { return strconv.Itoa(*p(c)) }}
}

func bytesOpt(flag, env, def, help string, p func(*Config) *int64) Option {
	return Option{Flag: flag, Env: env, Default: def, Help: help,
		set: func(c *Config, v string) error {
			n, err := parseBytes(v)
			if err != nil {
				return err
			}
			*p(c) = n
			return nil
		},
		get: func(c *Config) string { return strconv.FormatInt(*p(c), 10) }}
}

func durOpt(flag, env, def, help string, p func(*Config) *time.Duration) Option {
	return Option{Flag: flag, Env: env, Default: def, Help: help,
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return fmt.Errorf("want a duration such as 5s or 250ms, got %q", v)
			}
			*p(c) = d
			return nil
		},
		get: func(c *Config) string { return p(c).String() }}
}

// Options is the configuration table, in the order the help shows it.
func Options() []Option {
	return []Option{
		strOpt("addr", "LLORCH_ADDR", "127.0.0.1:8080", "address to listen on; a non-loopback address needs an API token of at least 32 characters", func(c *Config) *string { return &c.Addr }),
		strOpt("api-token-file", "LLORCH_API_TOKEN_FILE", "", "file holding the client API token (one token); re-read on SIGHUP or change (LLORCH_API_TOKEN is used when no file is set)", func(c *Config) *string { return &c.APITokenFile }),
		strOpt("tls-cert-file", "LLORCH_TLS_CERT_FILE", "", "PEM certificate (chain) the listener serves over TLS, with tls-key-file; re-read on SIGHUP or change, open connections keep theirs", func(c *Config) *string { return &c.TLSCertFile }),
		strOpt("tls-key-file", "LLORCH_TLS_KEY_FILE", "", "PEM private key of tls-cert-file", func(c *Config) *string { return &c.TLSKeyFile }),
		strOpt("tls-min-version", "LLORCH_TLS_MIN_VERSION", "1.2", "lowest TLS version the listener accepts: 1.2 or 1.3", func(c *Config) *string { return &c.TLSMinVersion }),
		boolOpt("allow-plaintext", "LLORCH_ALLOW_PLAINTEXT", "false", "serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy, or a trusted network); without it such an address needs tls-cert-file", func(c *Config) *bool { return &c.AllowPlaintext }),
		boolOpt("auth-optional", "LLORCH_AUTH_OPTIONAL", "false", "let requests without a token through (loopback development only)", func(c *Config) *bool { return &c.AuthOptional }),
		boolOpt("trust-forwarded-for", "LLORCH_TRUST_FORWARDED_FOR", "false", "take the client address from X-Forwarded-For (behind a trusted proxy only)", func(c *Config) *bool { return &c.TrustForwardedFor }),
		strOpt("engine-token-file", "LLORCH_ENGINE_TOKEN_FILE", "", "file holding the token the router presents to engines; the client's token never reaches an engine", func(c *Config) *string { return &c.EngineTokenFile }),
		strOpt("engine-ca-file", "LLORCH_ENGINE_CA_FILE", "", "PEM CA bundle that engines announcing TLS (meta tls=1) are verified against, by their announced address; empty = the system roots", func(c *Config) *string { return &c.EngineCAFile }),
		strOpt("engine-cert-file", "LLORCH_ENGINE_CERT_FILE", "", "client certificate the router presents to TLS engines (mTLS), with engine-key-file; re-read on SIGHUP or change", func(c *Config) *string { return &c.EngineCertFile }),
		strOpt("engine-key-file", "LLORCH_ENGINE_KEY_FILE", "", "PEM private key of engine-cert-file", func(c *Config) *string { return &c.EngineKeyFile }),
		strOpt("consul-addr", "CONSUL_HTTP_ADDR", "127.0.0.1:8500", "Consul HTTP API address", func(c *Config) *string { return &c.ConsulAddr }),
		strOpt("consul-token-file", "CONSUL_HTTP_TOKEN_FILE", "", "file holding the Consul ACL token (read policy; CONSUL_HTTP_TOKEN is used when no file is set)", func(c *Config) *string { return &c.ConsulTokenFile }),
		strOpt("consul-ca-file", "CONSUL_CACERT", "", "PEM CA bundle Consul's HTTPS certificate is verified against; set (or CONSUL_HTTP_SSL=true) for an HTTPS-only agent", func(c *Config) *string { return &c.ConsulCAFile }),
		strOpt("consul-cert-file", "CONSUL_CLIENT_CERT", "", "client certificate for a Consul agent that verifies clients (verify_incoming), with consul-key-file", func(c *Config) *string { return &c.ConsulCertFile }),
		strOpt("consul-key-file", "CONSUL_CLIENT_KEY", "", "PEM private key of consul-cert-file", func(c *Config) *string { return &c.ConsulKeyFile }),
		strOpt("service-name", "LLORCH_SERVICE_NAME", registry.DefaultServiceName, "Consul service the engines register under", func(c *Config) *string { return &c.ServiceName }),
		bytesOpt("max-body-bytes", "LLORCH_MAX_BODY_BYTES", "4MiB", "largest request body accepted (bytes, or with KiB/MiB suffix); larger gets 413", func(c *Config) *int64 { return &c.MaxBodyBytes }),
		boolOpt("metrics-auth", "LLORCH_METRICS_AUTH", "false", "require the API token on /metrics", func(c *Config) *bool { return &c.MetricsAuth }),
		intOpt("retries", "LLORCH_RETRIES", "2", "further instances tried after a failure before the first byte (0 = no retry)", 0, func(c *Config) *int { return &c.Retries }),
		intOpt("resume-attempts", "LLORCH_RESUME_ATTEMPTS", "2", "other instances tried to continue a stream whose engine failed after the first byte (0 = end it with an error event)", 0, func(c *Config) *int { return &c.ResumeAttempts }),
		durOpt("retry-budget", "LLORCH_RETRY_BUDGET", "30s", "time after which no further instance is tried", func(c *Config) *time.Duration { return &c.RetryBudget }),
		durOpt("connect-timeout", "LLORCH_CONNECT_TIMEOUT", "2s", "TCP connect timeout to an engine", func(c *Config) *time.Duration { return &c.ConnectTimeout }),
		durOpt("first-byte-timeout", "LLORCH_FIRST_BYTE_TIMEOUT", "120s", "streams (stream:true): time an engine has to send the first event (prompt processing included); past it the attempt is a gateway failure and the next instance is tried", func(c *Config) *time.Duration { return &c.FirstByteTimeout }),
		durOpt("generation-timeout", "LLORCH_GENERATION_TIMEOUT", "30m", "non-streamed answers: time an engine has to produce the whole answer (it sends nothing before); past it the client gets 504 GENERATION_TIMEOUT, the instance is not blamed and the request is never re-run elsewhere", func(c *Config) *time.Duration { return &c.GenerationTimeout }),
		strOpt("generation-timeout-per-model", "LLORCH_GENERATION_TIMEOUT_PER_MODEL", "", "generation-timeout per model, e.g. \"llama-70b=2h,tiny=5m\"", func(c *Config) *string { return &c.GenerationTimeoutPerModel }),
		durOpt("idle-stream-timeout", "LLORCH_IDLE_STREAM_TIMEOUT", "60s", "longest silence allowed inside an answer (between events, or between body bytes) before it is cut", func(c *Config) *time.Duration { return &c.IdleStreamTimeout }),
		durOpt("client-write-timeout", "LLORCH_CLIENT_WRITE_TIMEOUT", "30s", "longest a single write to a client may block; a client that stops reading is cut and its slot freed (0 = no limit)", func(c *Config) *time.Duration { return &c.ClientWriteTimeout }),
		intOpt("eject-after", "LLORCH_EJECT_AFTER", "3", "consecutive gateway failures (connect errors, resets, timeouts, 502, 504, 503 without Retry-After) that eject an instance", 1, func(c *Config) *int { return &c.EjectAfter }),
		intOpt("eject-max-percent", "LLORCH_EJECT_MAX_PERCENT", "50", "most of a model's instances (percent, rounded down) ejected at once; a model with one instance is never emptied", 0, func(c *Config) *int { return &c.EjectMaxPercent }),
		intOpt("eject-success-rate-percent", "LLORCH_EJECT_SUCCESS_RATE_PERCENT", "50", "an instance whose recent answers (the last 64) succeed less often than this percent is ejected: the only way 500s eject (0 = never)", 0, func(c *Config) *int { return &c.EjectSuccessRatePercent }),
		intOpt("eject-success-rate-min-requests", "LLORCH_EJECT_SUCCESS_RATE_MIN_REQUESTS", "20", "answers an instance must have given (at most 64) before the success-rate rule judges it", 1, func(c *Config) *int { return &c.EjectSuccessRateMinReqs }),
		durOpt("slow-start", "LLORCH_SLOW_START", "30s", "after an ejection the instance looks busier to placement, the extra falling to nothing over this time", func(c *Config) *time.Duration { return &c.SlowStart }),
		durOpt("eject-backoff", "LLORCH_EJECT_BACKOFF", "5s", "first ejection period; doubles while the instance keeps failing", func(c *Config) *time.Duration { return &c.EjectBackoff }),
		durOpt("eject-backoff-max", "LLORCH_EJECT_BACKOFF_MAX", "2m", "cap on the ejection period", func(c *Config) *time.Duration { return &c.EjectBackoffMax }),
		durOpt("degraded-after", "LLORCH_DEGRADED_AFTER", "90s", "snapshot age after which /healthz reports degraded", func(c *Config) *time.Duration { return &c.DegradedAfter }),
		intOpt("max-idle-conns", "LLORCH_MAX_IDLE_CONNS", "1024", "idle keep-alive connections kept per engine", 1, func(c *Config) *int { return &c.MaxIdleConns }),
		durOpt("token-grace", "LLORCH_TOKEN_GRACE", "5m", "how long a rotated-out API token keeps working", func(c *Config) *time.Duration { return &c.TokenGrace }),
		strOpt("log-level", "LLORCH_LOG_LEVEL", "info", "log level: trace, debug, info, warn, error", func(c *Config) *string { return &c.LogLevel }),
		boolOpt("log-json", "LLORCH_LOG_JSON", "false", "log as JSON lines", func(c *Config) *bool { return &c.LogJSON }),
		intOpt("queue-capacity", "LLORCH_QUEUE_CAPACITY", "8", "requests that may wait per model while every instance is busy", 1, func(c *Config) *int { return &c.QueueCapacity }),
		strOpt("queue-policy", "LLORCH_QUEUE_POLICY", "reject", "full queue: reject (429 ADMISSION_REJECT) or drop-lru (evict the oldest batch, then interactive, waiter)", func(c *Config) *string { return &c.QueuePolicy }),
		durOpt("queue-timeout", "LLORCH_QUEUE_TIMEOUT", "30s", "longest wait in the queue before DEADLINE_UNMET", func(c *Config) *time.Duration { return &c.QueueTimeout }),
		durOpt("drain-timeout", "LLORCH_DRAIN_TIMEOUT", "30s", "on shutdown, how long answers in flight may finish before they are cut", func(c *Config) *time.Duration { return &c.DrainTimeout }),
		strOpt("otlp-endpoint", "LLORCH_OTLP_ENDPOINT", "", "OTLP/HTTP collector for traces (host:port or URL); empty = tracing off (traceparent is still passed on to engines)", func(c *Config) *string { return &c.OTLPEndpoint }),
		strOpt("model-aliases", "LLORCH_MODEL_ALIASES", "", "other names for served models, alias=model[,alias=model...] (e.g. gpt-4o-mini=llama-3.1-8b); /v1/models lists them", func(c *Config) *string { return &c.ModelAliases }),
		strOpt("model-fallbacks", "LLORCH_MODEL_FALLBACKS", "", "models tried in order when a model has no instance, none able to take requests, or a full queue: model=fallback[|fallback...][,model=...]; X-Llorch-Fallback-From marks such answers", func(c *Config) *string { return &c.ModelFallbacks }),
		strOpt("scheduler-profile", "LLORCH_SCHEDULER_PROFILE", "", "placement profile file (YAML/JSON: filters, weighted scorers, picker); empty = the built-in profile, \"least-in-flight\" = plain least-in-flight, \"round-robin\" = nginx-style rotation", func(c *Config) *string { return &c.SchedulerProfile }),
		durOpt("engine-poll-interval", "LLORCH_ENGINE_POLL_INTERVAL", "200ms", "how often the router asks each engine for its load (busy slots, queue, KV and prompt-cache use); 0 = never (placement then sees only this router's own requests)", func(c *Config) *time.Duration { return &c.EnginePoll }),
		durOpt("engine-stale-after", "LLORCH_ENGINE_STALE_AFTER", "1s", "age after which an engine's last load report counts as unknown (never as idle)", func(c *Config) *time.Duration { return &c.EngineStaleAfter }),
		strOpt("keys-file", "LLORCH_KEYS_FILE", "", "per-team API keys (YAML/JSON: name, digest, models, priority, rpm, tpm, concurrent, expires, disabled; `llorch key new` writes it); re-read on SIGHUP or change. The API token keeps working beside them", func(c *Config) *string { return &c.KeysFile }),
		strOpt("keys-consul-prefix", "LLORCH_KEYS_CONSUL_PREFIX", "", "Consul KV prefix holding more API keys, one per entry (e.g. llorch/keys/); followed with blocking queries", func(c *Config) *string { return &c.KeysConsulPrefix }),
		strOpt("router-service", "LLORCH_ROUTER_SERVICE", "llorch-router", "Consul service the routers register as; each router enforces 1/n of every key limit, n = its passing instances", func(c *Config) *string { return &c.RouterService }),
		strOpt("nomad-addr", "LLORCH_NOMAD_ADDR", "", "Nomad HTTP API address for pools that follow demand (jobs run with -max); empty = the router scales nothing", func(c *Config) *string { return &c.NomadAddr }),
		strOpt("nomad-token-file", "LLORCH_NOMAD_TOKEN_FILE", "", "file holding the Nomad ACL token (deploy/nomad/router-scaler-policy.hcl: list-jobs, read-job, scale-job; NOMAD_TOKEN is used when no file is set)", func(c *Config) *string { return &c.NomadTokenFile }),
		strOpt("nomad-namespace", "LLORCH_NOMAD_NAMESPACE", "default", "Nomad namespace whose pools the router scales", func(c *Config) *string { return &c.NomadNamespace }),
		durOpt("scale-interval", "LLORCH_SCALE_INTERVAL", "2s", "how often the router reads pool counts and decides", func(c *Config) *time.Duration { return &c.ScaleInterval }),
		durOpt("scale-sustain", "LLORCH_SCALE_SUSTAIN", "10s", "how long queueing or busy slots must last before a pool scales up", func(c *Config) *time.Duration { return &c.ScaleSustain }),
		durOpt("scale-up-cooldown", "LLORCH_SCALE_UP_COOLDOWN", "30s", "least time between two scale-ups of a pool", func(c *Config) *time.Duration { return &c.ScaleUpCooldown }),
		durOpt("scale-down-cooldown", "LLORCH_SCALE_DOWN_COOLDOWN", "1m", "least time after any change of a pool's count before it scales down", func(c *Config) *time.Duration { return &c.ScaleDownCooldown }),
		intOpt("scale-busy-percent", "LLORCH_SCALE_BUSY_PERCENT", "80", "in-flight requests as a percentage of a pool's slots above which it is busy (scale-up pressure)", 1, func(c *Config) *int { return &c.ScaleBusyPercent }),
	}
}

// DefaultConfig returns the configuration with every option at its default.
func DefaultConfig() Config {
	var c Config
	for _, o := range Options() {
		if err := o.set(&c, o.Default); err != nil {
			panic(fmt.Sprintf("router: bad default for %s: %v", o.Flag, err)) // a programming error, caught by tests
		}
	}
	return c
}

// FromEnv overrides c with the options set in the environment (getenv is
// os.Getenv outside tests), plus LLORCH_API_TOKEN.
func (c *Config) FromEnv(getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	for _, o := range Options() {
		if v := getenv(o.Env); v != "" {
			if err := o.set(c, v); err != nil {
				return fmt.Errorf("%s: %w", o.Env, err)
			}
		}
	}
	c.APIToken = getenv("LLORCH_API_TOKEN")
	return nil
}

type optValue struct {
	c *Config
	o Option
}

func (v optValue) String() string {
	if v.c == nil {
		return ""
	}
	return v.o.get(v.c)
}
func (v optValue) Set(s string) error { return v.o.set(v.c, s) }
func (v optValue) IsBoolFlag() bool   { return v.o.IsBool }

// BindFlags registers every option on fs. Call it after FromEnv: a flag's
// default shown in -h is then the effective value, and a flag given on the
// command line wins over the environment.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	for _, o := range Options() {
		// flag appends "(default <value now>)": the effective value,
		// environment included.
		fs.Var(optValue{c, o}, o.Flag, fmt.Sprintf("%s (env %s)", o.Help, o.Env))
	}
}

// Validate checks combinations a single option cannot.
func (c *Config) Validate() error {
	var bad []string
	if c.Addr == "" {
		bad = append(bad, "addr: must not be empty")
	}
	if c.MaxBodyBytes <= 0 {
		bad = append(bad, "max-body-bytes: must be positive")
	}
	if c.EjectBackoffMax < c.EjectBackoff {
		bad = append(bad, "eject-backoff-max: must be at least eject-backoff")
	}
	if c.ServiceName == "" {
		bad = append(bad, "service-name: must not be empty")
	}
	if c.EnginePoll > 0 && c.EngineStaleAfter < c.EnginePoll {
		bad = append(bad, "engine-stale-after: must be at least engine-poll-interval")
	}
	if _, err := c.generationTimeouts(); err != nil {
		bad = append(bad, "generation-timeout-per-model: "+err.Error())
	}
	if c.EjectMaxPercent > 100 || c.EjectSuccessRatePercent > 100 {
		bad = append(bad, "eject-max-percent and eject-success-rate-percent: at most 100")
	}
	if c.EjectSuccessRateMinReqs > srWindowLen {
		bad = append(bad, fmt.Sprintf("eject-success-rate-min-requests: at most %d", srWindowLen))
	}
	if c.QueuePolicy != string(admission.Reject) && c.QueuePolicy != string(admission.DropLRU) {
		bad = append(bad, fmt.Sprintf("queue-policy: %q is not reject or drop-lru", c.QueuePolicy))
	}
	if _, err := newModelRoutes(c.ModelAliases, c.ModelFallbacks); err != nil {
		bad = append(bad, err.Error())
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		bad = append(bad, "tls-cert-file and tls-key-file: set both or neither")
	}
	if _, err := tlsfiles.ParseMinVersion(c.TLSMinVersion); err != nil {
		bad = append(bad, "tls-min-version: "+err.Error())
	}
	if (c.ConsulCertFile == "") != (c.ConsulKeyFile == "") {
		bad = append(bad, "consul-cert-file and consul-key-file: set both or neither")
	}
	if (c.EngineCertFile == "") != (c.EngineKeyFile == "") {
		bad = append(bad, "engine-cert-file and engine-key-file: set both or neither")
	}
	if len(bad) > 0 {
		return fmt.Errorf("router config: %s", strings.Join(bad, "; "))
	}
	return nil
}

// generationTimeouts parses GenerationTimeoutPerModel.
func (c *Config) generationTimeouts() (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for _, kv := range strings.Split(c.GenerationTimeoutPerModel, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		model, dur, ok := strings.Cut(kv, "=")
		d, err := time.ParseDuration(strings.TrimSpace(dur))
		if !ok || strings.TrimSpace(model) == "" || err != nil || d <= 0 {
			return nil, fmt.Errorf("want model=duration pairs such as llama-70b=2h, got %q", kv)
		}
		out[strings.TrimSpace(model)] = d
	}
	return out, nil
}

func parseBytes(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("want a positive size such as 4194304 or 4MiB, got %q", v)
	}
	return n * mult, nil
}
