// Package home is llorch's home profile: one machine, no Nomad and no
// Consul. It launches the engines of a few pools itself, supervises them
// with the same supervise and engine code the Nomad driver uses, announces
// them in an embedded registry (homereg) and serves the same router and
// scheduler on 127.0.0.1.
package home

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/catalog"
	"github.com/llorch/llorch/engine"
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
	Pools        []Pool `yaml:"pools"`
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
}

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
		if p.Ctx < 0 || p.Slots < 0 || p.Threads < 0 {
			return fmt.Errorf("home config: pools[%d]: ctx, slots and threads must not be negative", i)
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
