// StartTask and what it checks before launching anything: the task
// config, the engine binary, the model, the port and the state dir.

package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

func absPath(p string) (string, error) { return filepath.Abs(p) }

// --- StartTask ---

func (d *Driver) StartTask(ctx context.Context, req *drivers.StartTaskRequest) (*drivers.StartTaskResponse, error) {
	tc := req.GetTask()
	if tc == nil || tc.GetId() == "" {
		return nil, permanentError(codes.InvalidArgument, "start task: task config with an id is required")
	}
	if d.tasks.get(tc.GetId()) != nil {
		return nil, permanentError(codes.AlreadyExists, "start task %s: already started", tc.GetId())
	}
	st, apiKey, err := d.prepare(tc)
	if err != nil {
		return nil, err
	}
	h, err := d.launch(st, apiKey)
	if err != nil {
		d.releaseGPUs(st.TaskID)
		return nil, err
	}
	state, err := json.Marshal(h.st)
	if err != nil {
		return nil, permanentError(codes.Internal, "start task %s: encode driver state: %v", st.TaskID, err)
	}
	d.log.Info("task started", "task_id", st.TaskID, "engine", st.Engine, "pid", h.st.EnginePID.PID,
		"address", joinHostPort(st.Host, st.Port), "model", st.Spec.ModelName)
	d.events.emit(h, fmt.Sprintf("Started %s engine (pid %d) for model %q on %s", st.Engine, h.st.EnginePID.PID,
		st.Spec.ModelName, joinHostPort(st.Host, st.Port)), nil)
	d.metrics.taskLaunched(h)
	d.announceStart(h)
	return &drivers.StartTaskResponse{
		Result: drivers.StartTaskResponse_SUCCESS,
		Handle: &drivers.TaskHandle{
			Version:     handleVersion,
			Config:      tc,
			State:       drivers.TaskState_RUNNING,
			DriverState: state,
		},
	}, nil
}

// prepare decodes and checks everything a start needs; it launches
// nothing, so a failure here leaves nothing behind.
func (d *Driver) prepare(tc *drivers.TaskConfig) (taskState, string, error) {
	cfg := d.config()
	tcfg, err := DecodeTaskConfig(tc.GetMsgpackDriverConfig())
	if err != nil {
		return taskState{}, "", permanentError(codes.InvalidArgument, "%v", err)
	}
	engName := tcfg.Engine
	if engName == "" {
		engName = cfg.DefaultEngine
	}
	adapter, err := engine.Get(engName)
	if err != nil {
		return taskState{}, "", permanentError(codes.InvalidArgument, "task config: field %q: %v", "engine", err)
	}
	binCfg := cfg.Engines[engName]
	if binCfg == "" {
		binCfg = adapter.DefaultBinary()
	}
	binary, err := lookBinary(binCfg)
	if err != nil {
		return taskState{}, "", permanentError(codes.FailedPrecondition,
			"engine %q: binary %q not found on this node (set engines { %s = \"/path\" } in the plugin config): %v",
			engName, binCfg, engName, err)
	}
	if err := checkJobOptions(engName, tcfg, tc.GetEnv(), cfg.AllowedUnsafeOptions); err != nil {
		return taskState{}, "", permanentError(codes.InvalidArgument, "%v", err)
	}
	devGPUs := tc.GetDeviceEnv()[nvidiaVisibleDevices]
	if devGPUs != "" && tcfg.WantsGPUs() {
		return taskState{}, "", permanentError(codes.InvalidArgument,
			"task config: field %q: the task already has GPUs from Nomad's device block (%s=%s); ask for GPUs one way, not both",
			"gpus", nvidiaVisibleDevices, devGPUs)
	}
	model, err := resolveModel(cfg.ModelDir, tcfg.Model, engName, cfg.AllowModelsOutsideModelDir)
	if err != nil {
		return taskState{}, "", permanentError(codes.InvalidArgument, "task config: field %q: %v", "model", err)
	}
	modelName := tcfg.ModelName
	if modelName == "" {
		modelName = strings.TrimSuffix(filepath.Base(tcfg.Model), ".gguf")
	}
	port, hostIP, label, err := resolvePort(tcfg.Port, tc)
	if err != nil {
		return taskState{}, "", permanentError(codes.InvalidArgument, "task config: field %q: %v", "port", err)
	}
	host := cfg.AdvertiseAddress
	if host == "" && !isUnspecified(hostIP) {
		host = hostIP
	}
	if host == "" {
		host = firstIPv4()
	}
	bindHost := hostIP
	if bindHost == "" {
		bindHost = host
	}
	nodeID := cfg.NodeID
	if nodeID == "" {
		nodeID = tc.GetNodeId()
	}
	pool := tcfg.Pool
	if pool == "" {
		pool = tc.GetJobName() + "/" + tc.GetTaskGroupName()
	}
	service := tcfg.Service.Name
	if service == "" {
		service = cfg.Consul.ServiceName
	}
	apiKey := ""
	if cfg.EngineTokenFile != "" {
		b, err := os.ReadFile(cfg.EngineTokenFile)
		if err != nil {
			return taskState{}, "", recoverableError("read engine_token_file: %v", err)
		}
		apiKey = strings.TrimSpace(string(b))
	}
	taskDir := tc.GetAllocDir()
	if taskDir != "" {
		if td := filepath.Join(taskDir, tc.GetName()); isDir(td) {
			taskDir = td
		}
	}
	st := taskState{
		Version: handleVersion,
		TaskID:  tc.GetId(), AllocID: tc.GetAllocId(), TaskName: tc.GetName(),
		JobName: tc.GetJobName(), JobID: tc.GetJobId(), Group: tc.GetTaskGroupName(),
		Namespace: tc.GetNamespace(), NodeID: nodeID, NodeName: tc.GetNodeName(),
		Config: tcfg, Engine: engName, Binary: binary,
		Host: host, BindHost: bindHost, Port: port, PortLabel: label,
		PoolID: pool, ServiceName: service,
		InstanceID: instanceID(tc.GetAllocId(), tc.GetName()),
		TaskDir:    taskDir,
		Env:        neutralTaskEnv(engName, tc.GetEnv(), tc.GetDeviceEnv()),
		DeviceGPUs: devGPUs,
		StdoutPath: tc.GetStdoutPath(), StderrPath: tc.GetStderrPath(),
	}
	st.StateDir = stateDirFor(tc)
	st.Spec = engine.Spec{
		Model: model, ModelName: modelName, Host: bindHost, Port: port,
		Ctx: tcfg.Ctx, Slots: tcfg.Slots, GPULayers: tcfg.GPULayers, Threads: tcfg.Threads,
		ExtraArgs: tcfg.ExtraArgs, StateDir: engineDirFor(tc, st.StateDir),
	}
	if st.Isolation, err = d.isolationFor(tc, &st, adapter, apiKey); err != nil {
		return taskState{}, "", err
	}
	if err := placeTLS(&st, adapter); err != nil {
		return taskState{}, "", err
	}
	return st, apiKey, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// stateDirFor is where a task attempt's supervisor files live: in the
// task's private dir, which `nomad alloc fs` does not serve (private/,
// else secrets/; created 0700 when the agent made neither), so the agent's
// alloc GC removes it; apart per attempt because each start has a new id.
func stateDirFor(tc *drivers.TaskConfig) string {
	parts := strings.Split(tc.GetId(), "/")
	attempt := unsafeName.ReplaceAllString(parts[len(parts)-1], "_")
	if tc.GetAllocDir() != "" {
		return filepath.Join(privateDirOf(tc), ".llorch", attempt)
	}
	return filepath.Join(os.TempDir(), "llorch-tasks", unsafeName.ReplaceAllString(tc.GetId(), "_"))
}

// privateDirOf is the task's directory hidden from `nomad alloc fs`.
func privateDirOf(tc *drivers.TaskConfig) string {
	td := filepath.Join(tc.GetAllocDir(), unsafeName.ReplaceAllString(tc.GetName(), "_"))
	for _, sub := range []string{"private", "secrets"} {
		if isDir(filepath.Join(td, sub)) {
			return filepath.Join(td, sub)
		}
	}
	return filepath.Join(td, "private")
}

// engineDirFor is the engine's own writable dir (Ollama's model store and
// HOME). It holds model copies, so it must not be a small tmpfs: under
// private/ where the agent made one, else beside the task's files.
func engineDirFor(tc *drivers.TaskConfig, stateDir string) string {
	if tc.GetAllocDir() == "" || filepath.Base(privateDirOf(tc)) == "private" {
		return filepath.Join(stateDir, "engine")
	}
	parts := strings.Split(tc.GetId(), "/")
	attempt := unsafeName.ReplaceAllString(parts[len(parts)-1], "_")
	return filepath.Join(tc.GetAllocDir(), unsafeName.ReplaceAllString(tc.GetName(), "_"), ".llorch", attempt, "engine")
}

// removeStateDirs removes a task attempt's state and engine dirs.
func removeStateDirs(st taskState) error {
	err := os.RemoveAll(st.StateDir)
	if d := st.Spec.StateDir; d != "" && !strings.HasPrefix(d, st.StateDir+string(filepath.Separator)) {
		if rerr := os.RemoveAll(filepath.Dir(d)); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// instanceID is the registry id: stable across plugin restarts and task
// restarts within one allocation.
func instanceID(allocID, task string) string {
	return "llorch-" + allocID + "-" + unsafeName.ReplaceAllString(task, "_")
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// resolvePort turns the port setting into a host port: a number, or a
// label of the group's network block (from the task's port mappings, else
// NOMAD_PORT_<label>). With no setting, a task with exactly one port uses
// it.
func resolvePort(setting string, tc *drivers.TaskConfig) (port int, hostIP, label string, err error) {
	mappings := tc.GetResources().GetPorts()
	if setting == "" {
		if len(mappings) == 1 {
			setting = mappings[0].GetLabel()
		} else {
			return 0, "", "", fmt.Errorf("required: a port label from the group's network block (\"http\") or a port number")
		}
	}
	if n, convErr := strconv.Atoi(setting); convErr == nil {
		if n <= 0 || n > 65535 {
			return 0, "", "", fmt.Errorf("port %d is out of range 1-65535", n)
		}
		return n, "", "", nil
	}
	for _, m := range mappings {
		if m.GetLabel() == setting && m.GetValue() > 0 {
			return int(m.GetValue()), m.GetHostIp(), setting, nil
		}
	}
	if v := tc.GetEnv()["NOMAD_PORT_"+setting]; v != "" {
		if n, convErr := strconv.Atoi(v); convErr == nil && n > 0 && n <= 65535 {
			return n, tc.GetEnv()["NOMAD_HOST_IP_"+setting], setting, nil
		}
	}
	known := make([]string, 0, len(mappings))
	for _, m := range mappings {
		known = append(known, m.GetLabel())
	}
	return 0, "", "", fmt.Errorf("port label %q is not in the group's network block (labels: %v)", setting, known)
}

// isUnspecified: a wildcard address can be bound but not advertised.
func isUnspecified(ip string) bool {
	p := net.ParseIP(ip)
	return p != nil && p.IsUnspecified()
}

// firstIPv4 is the node's first non-loopback IPv4, else loopback.
func firstIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip4 := ipn.IP.To4(); ip4 != nil && !ip4.IsLoopback() && !ip4.IsLinkLocalUnicast() {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}
