// Package driver is llorch's Nomad task driver plugin: it starts inference
// engines (through engine/ adapters) as Nomad tasks, each under a per-task
// supervisor process so tasks outlive plugin and agent restarts, and
// reports their exit, stats and events over Nomad's plugin protocol.
package driver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/structs"
)

// PluginName is what jobs write in `driver = "..."`; the plugin file in the
// agent's plugin_dir must have the same name.
const PluginName = "llorch"

// Version is the plugin version the agent sees; it must parse as a
// go-version. Set at link time with -ldflags "-X .../driver.Version=...".
var Version = "0.1.0"

// apiVersion is the only driver API version Nomad has.
const apiVersion = "v0.1.0"

// Driver serves both the base and the driver service.
type Driver struct {
	base.UnimplementedBasePluginServer
	drivers.UnimplementedDriverServer

	log hclog.Logger
	// selfExe is the llorch binary, re-executed as each task's supervisor.
	selfExe string

	// ctx is the plugin process's lifetime: it owns the watchers of
	// recovered tasks and the long-lived streams.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.RWMutex
	cfg       PluginConfig
	cfgGen    uint64
	cfgNotify chan struct{} // closed and replaced at each SetConfig

	tasks  *taskStore
	events *eventBroker

	gpus    gpuState      // GPU discovery and reservations (gpu.go); zero value ready
	catalog catalogState  // model_dir fingerprint (catalog.go); zero value ready
	metrics driverMetrics // /metrics listener (metrics.go); zero value ready

	announcements sync.Map // *taskHandle → *announcement (announce.go)
}

// New makes a driver; nothing is started and nothing on the node is
// touched (the agent launches plugins three times at start).
func New(log hclog.Logger) (*Driver, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Driver{
		log: log, selfExe: exe, ctx: ctx, cancel: cancel,
		cfg: defaultPluginConfig(), cfgNotify: make(chan struct{}),
		tasks: newTaskStore(), events: newEventBroker(),
	}, nil
}

// Close stops the plugin's own goroutines; tasks keep running.
func (d *Driver) Close() { d.cancel() }

func (d *Driver) config() PluginConfig {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.cfg
}

func (d *Driver) configChanged() <-chan struct{} {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.cfgNotify
}

// --- base service ---

func (d *Driver) PluginInfo(context.Context, *base.PluginInfoRequest) (*base.PluginInfoResponse, error) {
	return &base.PluginInfoResponse{
		Type:              base.PluginType_DRIVER,
		PluginApiVersions: []string{apiVersion},
		PluginVersion:     Version,
		Name:              PluginName,
	}, nil
}

func (d *Driver) ConfigSchema(context.Context, *base.ConfigSchemaRequest) (*base.ConfigSchemaResponse, error) {
	return &base.ConfigSchemaResponse{Spec: PluginConfigSpec()}, nil
}

// SetConfig may come several times (validation, then for real). The
// agent's validation launches send no nomad_config.driver; only the
// long-lived instance gets one, so only it starts the /metrics listener.
func (d *Driver) SetConfig(_ context.Context, req *base.SetConfigRequest) (*base.SetConfigResponse, error) {
	cfg, err := DecodePluginConfig(req.GetMsgpackConfig())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := validateEngines(cfg); err != nil {
		return nil, status.Error(codes.InvalidArgument, "plugin config: "+err.Error())
	}
	d.mu.Lock()
	d.cfg = cfg
	d.cfgGen++
	close(d.cfgNotify)
	d.cfgNotify = make(chan struct{})
	d.mu.Unlock()
	d.log.Debug("plugin config set", "default_engine", cfg.DefaultEngine, "engines", sortedKeys(cfg.Engines),
		"model_dir", cfg.ModelDir, "fingerprint_period", cfg.FingerprintPeriod.String(),
		"api_version", req.GetPluginApiVersion())
	if req.GetNomadConfig().GetDriver() != nil {
		d.startMetrics()
	}
	return &base.SetConfigResponse{}, nil
}

func validateEngines(cfg PluginConfig) error {
	for name, path := range cfg.Engines {
		if _, err := engine.Get(name); err != nil {
			return fmt.Errorf("field %q: %w", "engines."+name, err)
		}
		if path == "" {
			return fmt.Errorf("field %q: empty binary path", "engines."+name)
		}
	}
	if _, err := engine.Get(cfg.DefaultEngine); err != nil {
		return fmt.Errorf("field %q: %w", "default_engine", err)
	}
	return nil
}

// --- driver service: schema and capabilities ---

func (d *Driver) TaskConfigSchema(context.Context, *drivers.TaskConfigSchemaRequest) (*drivers.TaskConfigSchemaResponse, error) {
	return &drivers.TaskConfigSchemaResponse{Spec: TaskConfigSpec()}, nil
}

// Capabilities are what the driver really does: signals and exec yes, no
// filesystem isolation, host networking only, no volume mounts.
func (d *Driver) Capabilities(context.Context, *drivers.CapabilitiesRequest) (*drivers.CapabilitiesResponse, error) {
	return &drivers.CapabilitiesResponse{Capabilities: &drivers.DriverCapabilities{
		SendSignals:           true,
		Exec:                  true,
		FsIsolation:           drivers.DriverCapabilities_NONE,
		NetworkIsolationModes: []drivers.NetworkIsolationSpec_NetworkIsolationMode{drivers.NetworkIsolationSpec_HOST},
		MountConfigs:          drivers.DriverCapabilities_NO_MOUNTS,
	}}, nil
}

func (d *Driver) Init(context.Context, *drivers.InitRequest) (*drivers.InitResponse, error) {
	return &drivers.InitResponse{}, nil
}

// Shutdown comes before the agent kills the plugin; tasks keep running.
func (d *Driver) Shutdown(context.Context, *drivers.ShutdownRequest) (*drivers.ShutdownResponse, error) {
	d.log.Debug("shutdown requested; tasks keep running")
	return &drivers.ShutdownResponse{}, nil
}

// --- errors ---

// recoverableError makes a start failure the agent retries under the
// task's restart policy: FailedPrecondition with a RecoverableError detail.
func recoverableError(format string, a ...interface{}) error {
	st := status.New(codes.FailedPrecondition, fmt.Sprintf(format, a...))
	if withDetail, err := st.WithDetails(&structs.RecoverableError{Recoverable: true}); err == nil {
		st = withDetail
	}
	return st.Err()
}

// permanentError fails the task with no restart.
func permanentError(c codes.Code, format string, a ...interface{}) error {
	return status.Error(c, fmt.Sprintf(format, a...))
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// lookBinary resolves an engine binary to an absolute, executable path.
func lookBinary(path string) (string, error) {
	p, err := exec.LookPath(path)
	if err != nil {
		return "", err
	}
	if abs, err := absPath(p); err == nil {
		p = abs
	}
	return p, nil
}
