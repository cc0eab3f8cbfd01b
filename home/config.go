// Package home is llorch's home profile: one machine, no Nomad and no
// Consul. It launches the engines of a few pools itself, supervises them
// with the same supervise and engine code the Nomad driver uses, announces
// them in an embedded registry (registry/memory) and serves the same router and
// scheduler on 127.0.0.1.
package home

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/models/catalog"
)

// Config is the home profile's configuration (YAML keys in tags).
type Config struct {
	// Addr is where the router listens; loopback by default.
	Addr string `yaml:"addr"`
	// StateDir keeps tokens, engine logs and the state file that lets a
	// restart clean up engines a crashed run left behind.
	StateDir string `yaml:"state_dir"`
	// APITokenFile holds the client token; default <state_dir>/api.token,
	// created on first start.
	APITokenFile string `yaml:"api_token_file"`
	// OnDemand starts each pool on its first request and stops it after
	// its idle time, or to make room under a budget (pinned pools start at
	// once and stay). Off, every pool starts at start-up and runs until exit.
	OnDemand bool `yaml:"on_demand"`
	// Idle is how long an on-demand pool may go without requests before it
	// is stopped (default 10m; a pool's own idle wins).
	Idle time.Duration `yaml:"idle"`
	// VRAMBudgetMiB and RAMBudgetMiB bound what on-demand pools may hold at
	// once: GPU pools (gpu_layers ≠ 0, or a GPU-only engine) count against
	// VRAM, CPU pools against RAM, each by its estimate (`llorch estimate`)
	// or memory_mib. 0 = no bound.
	VRAMBudgetMiB int `yaml:"vram_budget_mib"`
	RAMBudgetMiB  int `yaml:"ram_budget_mib"`
	// QueueTimeout bounds a request's wait for a loading model or a busy
	// slot (default 2m); QueueCapacity is how many may wait per model
	// (default 32).
	QueueTimeout  time.Duration `yaml:"queue_timeout"`
	QueueCapacity int           `yaml:"queue_capacity"`
	Pools         []Pool        `yaml:"pools"`
}

// Pool is one model served by one engine process.
type Pool struct {
	Name      string   `yaml:"name"`
	Engine    string   `yaml:"engine"`     // default llamacpp
	Model     string   `yaml:"model"`      // model file (GGUF) or name
	ModelName string   `yaml:"model_name"` // what clients send; default the file's base name
	Binary    string   `yaml:"binary"`     // engine program; default $LLORCH_CACHE/bin/<engine binary>, then PATH
	Ctx       int      `yaml:"ctx"`
	Slots     int      `yaml:"slots"`
	Threads   int      `yaml:"threads"`
	GPULayers int      `yaml:"gpu_layers"`
	ExtraArgs []string `yaml:"extra_args"`
	// Pinned pools start at start-up and are never stopped for idleness
	// or evicted for another (on_demand only).
	Pinned bool          `yaml:"pinned"`
	Idle   time.Duration `yaml:"idle"` // default: the config's idle
	// MemoryMiB is what the pool counts against its budget (default: the
	// model's estimate for this ctx and slots).
	MemoryMiB int `yaml:"memory_mib"`
}

// Home defaults for on-demand pools and the wait for them.
const (
	DefaultIdle          = 10 * time.Minute
	DefaultQueueTimeout  = 2 * time.Minute
	DefaultQueueCapacity = 32
)

var poolNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)

// DefaultStateDir is $XDG_STATE_HOME/llorch, else ~/.local/state/llorch.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "llorch")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "llorch")
	}
	return filepath.Join(os.TempDir(), "llorch-state")
}

// LoadConfig reads a YAML config; unknown keys are errors naming the key.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("home config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("home config %s: %w", path, err)
	}
	return c, nil
}

// Normalize fills defaults and validates; errors name the field.
func (c *Config) Normalize() error {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:8080"
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir()
	}
	if c.APITokenFile == "" {
		c.APITokenFile = filepath.Join(c.StateDir, "api.token")
	}
	if len(c.Pools) == 0 {
		return errors.New("home config: pools: at least one pool is required (or use --model)")
	}
	if c.Idle == 0 {
		c.Idle = DefaultIdle
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = DefaultQueueTimeout
	}
	if c.QueueCapacity == 0 {
		c.QueueCapacity = DefaultQueueCapacity
	}
	switch {
	case c.Idle < 0:
		return errors.New("home config: idle: must not be negative")
	case c.QueueTimeout < 0:
		return errors.New("home config: queue_timeout: must not be negative")
	case c.QueueCapacity < 0:
		return errors.New("home config: queue_capacity: must not be negative")
	case c.VRAMBudgetMiB < 0 || c.RAMBudgetMiB < 0:
		return errors.New("home config: vram_budget_mib, ram_budget_mib: must not be negative")
	}
	seen := map[string]bool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.Engine == "" {
			p.Engine = "llamacpp"
		}
		if _, err := engine.Get(p.Engine); err != nil {
			return fmt.Errorf("home config: pools[%d].engine: %w", i, err)
		}
		if p.Model == "" {
			return fmt.Errorf("home config: pools[%d].model: required", i)
		}
		if p.ModelName == "" {
			p.ModelName = catalog.ModelName(p.Model)
		}
		if p.Name == "" {
			p.Name = p.ModelName
		}
		if !poolNameRE.MatchString(p.Name) {
			return fmt.Errorf("home config: pools[%d].name: %q is not a valid pool name", i, p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("home config: pools[%d].name: %q is used twice", i, p.Name)
		}
		seen[p.Name] = true
		if p.Ctx < 0 || p.Slots < 0 || p.Threads < 0 || p.MemoryMiB < 0 || p.Idle < 0 {
			return fmt.Errorf("home config: pools[%d]: ctx, slots, threads, memory_mib and idle must not be negative", i)
		}
		if p.Idle == 0 {
			p.Idle = c.Idle
		}
		if p.Slots == 0 {
			p.Slots = 1
		}
		if p.Engine == "llamacpp" || p.Engine == "ollama" {
			if _, err := os.Stat(p.Model); err != nil {
				return fmt.Errorf("home config: pools[%d].model: %w", i, err)
			}
		}
	}
	return nil
}

// Flags are `llorch home`'s command-line flags. They live here, next to
// Config, so the configuration reference is generated from the very flag
// set the command parses.
type Flags struct {
	ConfigFile string
	LogJSON    bool
	LogLevel   string
	// ConsulAddr is accepted only to refuse it: a Consul address means the
	// cloud profile, which `llorch router` serves.
	ConsulAddr string
	Config     Config
	Pool       Pool // the one pool --model describes
}

// Bind registers the flags on fs.
func (f *Flags) Bind(fs *flag.FlagSet, engines []string) {
	fs.StringVar(&f.ConfigFile, "config", "", "home config file (YAML: addr, state_dir, api_token_file, on_demand, idle, vram_budget_mib, ram_budget_mib, queue_timeout, queue_capacity, pools)")
	fs.StringVar(&f.Config.Addr, "addr", "", "router address (default 127.0.0.1:8080)")
	fs.StringVar(&f.Config.StateDir, "state-dir", "", "state directory (default $XDG_STATE_HOME/llorch or ~/.local/state/llorch)")
	fs.StringVar(&f.Pool.Model, "model", "", "model file to serve (one pool, without --config)")
	fs.StringVar(&f.Pool.Name, "name", "", "pool name (default: the model name)")
	fs.StringVar(&f.Pool.ModelName, "model-name", "", "name clients send as \"model\" (default: the file's base name)")
	fs.StringVar(&f.Pool.Engine, "engine", "llamacpp", fmt.Sprintf("engine: %v", engines))
	fs.StringVar(&f.Pool.Binary, "engine-bin", "", "engine program (default: $LLORCH_CACHE/bin/<engine binary>, then PATH)")
	fs.IntVar(&f.Pool.Ctx, "ctx", 0, "context per slot (default: the engine's)")
	fs.IntVar(&f.Pool.Slots, "slots", 1, "parallel slots")
	fs.IntVar(&f.Pool.Threads, "threads", 0, "CPU threads (default: the engine's)")
	fs.IntVar(&f.Pool.GPULayers, "gpu-layers", 0, "layers to offload to the GPU (-1 = all)")
	fs.StringVar(&f.ConsulAddr, "consul-addr", "", "refused: a Consul `address` means the cloud profile, which llorch router serves")
	// The same variables as `llorch router`, so one environment serves both.
	logJSON, _ := strconv.ParseBool(os.Getenv("LLORCH_LOG_JSON"))
	fs.BoolVar(&f.LogJSON, "log-json", logJSON, "log JSON lines (also LLORCH_LOG_JSON=true)")
	level := os.Getenv("LLORCH_LOG_LEVEL")
	if level == "" {
		level = "info"
	}
	fs.StringVar(&f.LogLevel, "log-level", level, "trace, debug, info, warn or error (also LLORCH_LOG_LEVEL)")
}

// Resolve turns parsed flags into a Config: the file when --config is
// given (--addr and --state-dir still override it), else one pool from
// --model. It does not validate; New does.
func (f *Flags) Resolve() (Config, error) {
	if f.ConsulAddr != "" {
		return Config{}, errCloud("--consul-addr " + f.ConsulAddr)
	}
	cfg := f.Config
	if f.ConfigFile != "" {
		if f.Pool.Model != "" {
			return Config{}, errors.New("--model and --config: give one (a config file declares its pools)")
		}
		fileCfg, err := LoadConfig(f.ConfigFile)
		if err != nil {
			return Config{}, err
		}
		if cfg.Addr != "" {
			fileCfg.Addr = cfg.Addr
		}
		if cfg.StateDir != "" {
			fileCfg.StateDir = cfg.StateDir
		}
		return fileCfg, nil
	}
	if f.Pool.Model != "" {
		cfg.Pools = []Pool{f.Pool}
	}
	return cfg, nil
}

// errCloud is the refusal when something asks for the cloud profile.
func errCloud(why string) error {
	return fmt.Errorf("%s: the home profile runs without Nomad and Consul; for the cloud profile run `llorch router` (engines run as Nomad tasks of the llorch driver, see docs/install.md and docs/migration.md)", why)
}

// checkProfile refuses to start when the environment asks for the cloud
// profile: LLORCH_PROFILE=cloud, or CONSUL_HTTP_ADDR set without
// LLORCH_PROFILE=home (which forces the home profile).
func checkProfile() error {
	switch p := strings.ToLower(os.Getenv("LLORCH_PROFILE")); p {
	case "cloud":
		return errCloud("LLORCH_PROFILE=cloud")
	case "home":
		return nil
	case "":
	default:
		return fmt.Errorf("LLORCH_PROFILE=%q: want home or cloud", p)
	}
	if a := os.Getenv("CONSUL_HTTP_ADDR"); a != "" {
		return errCloud("CONSUL_HTTP_ADDR=" + a + " is set (set LLORCH_PROFILE=home to run the home profile anyway)")
	}
	return nil
}
