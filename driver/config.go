// The plugin and task config types and their defaults.

package driver

import (
	"time"

	"github.com/llorch/llorch/driver/users"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// Defaults of the plugin config; the schema below states the same values as
// HCL literals so the agent fills them in (a test checks both agree).
const (
	defaultEngine            = "llamacpp"
	defaultFingerprintPeriod = 30 * time.Second
	defaultVRAMHeadroomMiB   = 512
)

// ConsulConfig is the plugin config's consul block.
type ConsulConfig struct {
	Address     string `json:"address,omitempty"`
	TokenFile   string `json:"token_file,omitempty"`
	ServiceName string `json:"service_name,omitempty"`
	// HTTPS to the agent (any of them set: https); empty = the CONSUL_*
	// environment's settings.
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

// TLS is the block's HTTPS settings.
func (c ConsulConfig) TLS() consul.TLS {
	return consul.TLS{CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
}

// PluginConfig is `plugin "llorch" { config { ... } }` on a client.
type PluginConfig struct {
	Consul            ConsulConfig      `json:"consul"`
	Engines           map[string]string `json:"engines,omitempty"` // engine name → binary path
	DefaultEngine     string            `json:"default_engine"`
	FingerprintPeriod time.Duration     `json:"fingerprint_period"`
	RequireGPU        bool              `json:"require_gpu"`
	GPUSharing        bool              `json:"gpu_sharing"`
	VRAMHeadroomMiB   int               `json:"vram_headroom_mib"`
	ModelDir          string            `json:"model_dir,omitempty"`
	EngineTokenFile   string            `json:"engine_token_file,omitempty"`
	AdvertiseAddress  string            `json:"advertise_address,omitempty"`
	NodeID            string            `json:"node_id,omitempty"`
	MetricsAddress    string            `json:"metrics_address,omitempty"`
	// AllowedUnsafeOptions are the flags and env vars that make an engine
	// run code the job chooses (engine.Rules.Code) which jobs on this node
	// may set anyway, e.g. "--trust-remote-code".
	AllowedUnsafeOptions []string `json:"allowed_unsafe_options,omitempty"`
	// AllowModelsOutsideModelDir lets a task name a model file outside
	// model_dir (after resolving symlinks); off by default.
	AllowModelsOutsideModelDir bool `json:"allow_models_outside_model_dir"`

	// DefaultUser runs engines of tasks that set no user; empty: the
	// plugin's own user. DeniedHostUIDs/GIDs refuse engines whose user is
	// in those ranges (raw_exec's format, "0-999,65534").
	DefaultUser    string       `json:"default_user,omitempty"`
	DeniedHostUIDs users.Ranges `json:"denied_host_uids,omitempty"`
	DeniedHostGIDs users.Ranges `json:"denied_host_gids,omitempty"`
}

// defaultPluginConfig is what a client with no config block runs with.
func defaultPluginConfig() PluginConfig {
	return PluginConfig{
		Consul:            ConsulConfig{ServiceName: registry.DefaultServiceName},
		DefaultEngine:     defaultEngine,
		FingerprintPeriod: defaultFingerprintPeriod,
		GPUSharing:        true,
		VRAMHeadroomMiB:   defaultVRAMHeadroomMiB,
	}
}

// ServiceConfig is the task config's service block.
type ServiceConfig struct {
	Name string   `json:"name,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

// TaskConfig is a job's `config { ... }` for a llorch task.
type TaskConfig struct {
	Engine    string `json:"engine,omitempty"`
	Model     string `json:"model"`
	ModelName string `json:"model_name,omitempty"`
	// Port is a port label of the group's network block ("http") or a
	// number ("8080").
	Port      string `json:"port,omitempty"`
	Ctx       int    `json:"ctx,omitempty"`
	Slots     int    `json:"slots,omitempty"`
	GPULayers int    `json:"gpu_layers,omitempty"`
	Threads   int    `json:"threads,omitempty"`
	// gpus is either a count or a list of GPU UUIDs.
	GPUCount  int               `json:"gpu_count,omitempty"`
	GPUIDs    []string          `json:"gpu_ids,omitempty"`
	VRAMMiB   int               `json:"vram_mib,omitempty"`
	ExtraArgs []string          `json:"extra_args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Pool      string            `json:"pool,omitempty"`
	Service   ServiceConfig     `json:"service"`
	// The task's certificate and key (relative paths are in the task
	// directory, e.g. "secrets/tls.crt" from a template block): the engine
	// serves HTTPS with them where it can, else the relay does, and the
	// instance is announced with tls=1. TLSClientCAFile makes the relay
	// demand client certificates from that CA.
	TLSCertFile     string `json:"tls_cert_file,omitempty"`
	TLSKeyFile      string `json:"tls_key_file,omitempty"`
	TLSClientCAFile string `json:"tls_client_ca_file,omitempty"`
}

// WantsGPUs reports whether the task asked for any GPU.
func (c TaskConfig) WantsGPUs() bool { return c.GPUCount > 0 || len(c.GPUIDs) > 0 }
