package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/procfs"
)

const (
	// launchTimeout bounds how long StartTask waits for the supervisor to
	// report the engine's pid.
	launchTimeout = 15 * time.Second
	// reapTimeout bounds the wait for a SIGKILLed group to be reported gone.
	reapTimeout = 10 * time.Second
	// pollInterval is how often a recovered task's supervisor is checked.
	pollInterval = 100 * time.Millisecond
	// defaultKillTimeout is Nomad's default kill_timeout.
	defaultKillTimeout = 5 * time.Second
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
	model, err := resolveModel(cfg.ModelDir, tcfg.Model, engName)
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
		Env:        mergeEnv(tc.GetEnv(), tc.GetDeviceEnv()),
		StdoutPath: tc.GetStdoutPath(), StderrPath: tc.GetStderrPath(),
	}
	st.StateDir = stateDirFor(tc)
	st.Spec = engine.Spec{
		Model: model, ModelName: modelName, Host: bindHost, Port: port,
		Ctx: tcfg.Ctx, Slots: tcfg.Slots, GPULayers: tcfg.GPULayers, Threads: tcfg.Threads,
		ExtraArgs: tcfg.ExtraArgs, StateDir: filepath.Join(st.StateDir, "engine"),
	}
	return st, apiKey, nil
}

// launch reserves GPUs, starts the supervisor and waits for the engine's
// pid. On failure nothing is left running.
func (d *Driver) launch(st taskState, apiKey string) (*taskHandle, error) {
	adapter, err := engine.Get(st.Engine)
	if err != nil {
		return nil, permanentError(codes.InvalidArgument, "task config: field %q: %v", "engine", err)
	}
	gpuEnv, reservation, err := d.assignGPUs(st.TaskID, st.Config)
	if err != nil {
		return nil, recoverableError("%v", err)
	}
	st.GPUReservation = reservation
	spec := st.Spec
	spec.APIKey = apiKey
	cmd, err := adapter.Command(st.Binary, spec)
	if err != nil {
		return nil, permanentError(codes.InvalidArgument, "engine %s: build command: %v", st.Engine, err)
	}
	// Later layers win: the task's own env and device env (st.Env), what the engine
	// needs, the job's env block, and last the GPU pinning, which a job must
	// not override.
	env := mergeEnv(st.Env, envSliceToMap(cmd.Env), st.Config.Env, gpuEnv)
	st.Env = env
	if err := os.MkdirAll(st.Spec.StateDir, 0o700); err != nil {
		return nil, recoverableError("create task state dir: %v", err)
	}
	cleanup := func() { _ = os.RemoveAll(st.StateDir) }
	sspec := supervisorSpec{Path: cmd.Path, Args: cmd.Args, Dir: st.TaskDir}
	for k, v := range env {
		// The engine token goes to the engine through the supervisor,
		// which reads it from the token file: never into the spec on disk.
		if apiKey != "" && v == apiKey && d.config().EngineTokenFile != "" {
			sspec.SecretEnv = append(sspec.SecretEnv, secretEnv{Name: k, File: d.config().EngineTokenFile})
			continue
		}
		sspec.Env = append(sspec.Env, k+"="+v)
	}
	sort.Strings(sspec.Env)
	if err := writeJSONAtomic(filepath.Join(st.StateDir, specFile), sspec); err != nil {
		cleanup()
		return nil, recoverableError("write supervisor spec: %v", err)
	}
	stdout, err := openLogSink(st.StdoutPath)
	if err != nil {
		cleanup()
		return nil, recoverableError("%v", err)
	}
	stderr, err := openLogSink(st.StderrPath)
	if err != nil {
		stdout.Close()
		cleanup()
		return nil, recoverableError("%v", err)
	}
	sup := exec.Command(d.selfExe, SupervisorCommand, st.StateDir)
	sup.Env = supervisorEnv()
	sup.Dir = st.StateDir
	sup.Stdout, sup.Stderr = stdout, stderr
	// A session of its own and no parent-death signal: the task must
	// survive the plugin.
	sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = sup.Start()
	stdout.Close()
	stderr.Close()
	if err != nil {
		cleanup()
		return nil, recoverableError("start task supervisor: %v", err)
	}
	supStat, _ := procfs.ReadStat(sup.Process.Pid)
	st.Supervisor = engineRecord{PID: sup.Process.Pid, StartTime: supStat.StartTime}
	st.StartedAt = time.Now()

	h := newHandle(st, apiKey)
	supDone := make(chan struct{})
	go func() {
		_ = sup.Wait() // reap our child; the watcher reads the outcome from files
		close(supDone)
	}()

	// Wait for the engine's pid, or for the supervisor to give up.
	deadline := time.NewTimer(launchTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var rec engineRecord
		if err := readJSON(filepath.Join(st.StateDir, engineFile), &rec); err == nil && rec.PID > 0 {
			h.st.EnginePID = rec
			break
		}
		var xr exitRecord
		if err := readJSON(filepath.Join(st.StateDir, exitFile), &xr); err == nil {
			<-supDone
			cleanup()
			return nil, permanentError(codes.FailedPrecondition, "engine %s did not start: %s", st.Engine, xr.Err)
		}
		select {
		case <-supDone:
			cleanup()
			return nil, recoverableError("task supervisor exited before starting the engine (see its log)")
		case <-deadline.C:
			_ = syscall.Kill(-st.Supervisor.PID, syscall.SIGKILL)
			<-supDone
			cleanup()
			return nil, recoverableError("task supervisor did not start the engine within %s", launchTimeout)
		case <-tick.C:
		}
	}
	if !d.tasks.putNew(h) {
		// A concurrent StartTask with the same id won; undo ours.
		d.killGroup(h, syscall.SIGKILL)
		_ = syscall.Kill(st.Supervisor.PID, syscall.SIGKILL)
		<-supDone
		cleanup()
		return nil, permanentError(codes.AlreadyExists, "start task %s: already started", st.TaskID)
	}
	go d.watch(h, supDone)
	return h, nil
}

// mergeEnv layers maps; later ones win.
func mergeEnv(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func envSliceToMap(kvs []string) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		if i := strings.IndexByte(kv, '='); i > 0 {
			m[kv[:i]] = kv[i+1:]
		}
	}
	return m
}

func envMapToSlice(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// stateDirFor is where a task attempt's supervisor files live: inside the
// task's own directory, so the agent's alloc GC removes it, and apart per
// attempt because each start has a new id.
func stateDirFor(tc *drivers.TaskConfig) string {
	parts := strings.Split(tc.GetId(), "/")
	attempt := unsafeName.ReplaceAllString(parts[len(parts)-1], "_")
	if tc.GetAllocDir() != "" {
		return filepath.Join(tc.GetAllocDir(), unsafeName.ReplaceAllString(tc.GetName(), "_"), ".llorch", attempt)
	}
	return filepath.Join(os.TempDir(), "llorch-tasks", unsafeName.ReplaceAllString(tc.GetId(), "_"))
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

// resolveModel finds the model: a relative path is looked up in the node's
// model_dir. GGUF engines need a file; the others may take a model name.
func resolveModel(modelDir, model, engName string) (string, error) {
	p := model
	if !filepath.IsAbs(p) && modelDir != "" {
		p = filepath.Join(modelDir, p)
	}
	needsFile := filepath.IsAbs(model) || strings.HasSuffix(model, ".gguf") || engName == "llamacpp" || engName == "ollama"
	fi, err := os.Stat(p)
	switch {
	case err == nil && fi.IsDir() && (engName == "llamacpp" || engName == "ollama"):
		return "", fmt.Errorf("model %s is a directory, not a GGUF file", p)
	case err == nil:
		if abs, aerr := filepath.Abs(p); aerr == nil {
			p = abs
		}
		return p, nil
	case needsFile && errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("model file %s not found on this node", p)
	case needsFile:
		return "", fmt.Errorf("model file %s: %v", p, err)
	default:
		return model, nil // a model name the engine resolves itself
	}
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

// watch waits for the task's supervisor to end and records the engine's
// exit. supDone is closed when an own-child supervisor has been reaped; for
// a recovered task (nil) the supervisor is polled through /proc.
func (d *Driver) watch(h *taskHandle, supDone <-chan struct{}) {
	if supDone != nil {
		<-supDone
	} else {
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for procfs.Alive(h.st.Supervisor.PID, h.st.Supervisor.StartTime) {
			select {
			case <-d.ctx.Done():
				return
			case <-t.C:
			}
		}
	}
	var rec exitRecord
	if err := readJSON(filepath.Join(h.st.StateDir, exitFile), &rec); err != nil {
		// The supervisor died without a record (killed): make sure its
		// engine does not live on unsupervised.
		d.killGroup(h, syscall.SIGKILL)
		rec = exitRecord{ExitCode: -1, Err: "task supervisor exited without recording the engine's exit status", CompletedAt: time.Now()}
	}
	if !h.markExited(rec) {
		return
	}
	d.log.Info("task exited", "task_id", h.st.TaskID, "exit_code", rec.ExitCode, "signal", rec.Signal, "err", rec.Err)
	msg := fmt.Sprintf("Engine exited with code %d", rec.ExitCode)
	if rec.Signal != 0 {
		msg += fmt.Sprintf(" (signal %s)", unix.SignalName(syscall.Signal(rec.Signal)))
	}
	d.events.emit(h, msg, nil)
	d.announceExit(h)
}

// killGroup signals the engine's process group if the engine is still the
// process we started (pid reuse guard).
func (d *Driver) killGroup(h *taskHandle, sig syscall.Signal) {
	e := h.st.EnginePID
	if e.PID <= 0 {
		return
	}
	if !procfs.Alive(e.PID, e.StartTime) && len(procfs.GroupMembers(e.PID)) == 0 {
		return
	}
	if err := syscall.Kill(-e.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		d.log.Warn("signal engine group", "task_id", h.st.TaskID, "pgid", e.PID, "signal", sig.String(), "error", err)
	}
}

// --- RecoverTask ---

func (d *Driver) RecoverTask(_ context.Context, req *drivers.RecoverTaskRequest) (*drivers.RecoverTaskResponse, error) {
	hp := req.GetHandle()
	if hp == nil {
		return nil, status.Error(codes.InvalidArgument, "recover task: handle is required")
	}
	id := req.GetTaskId()
	if id == "" {
		id = hp.GetConfig().GetId() // after an agent restart only the handle is sent
	}
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "recover task: no task id in request or handle")
	}
	if d.tasks.get(id) != nil {
		return &drivers.RecoverTaskResponse{}, nil
	}
	if hp.GetVersion() != handleVersion {
		return nil, status.Errorf(codes.FailedPrecondition, "recover task %s: handle version %d, this plugin reads %d", id, hp.GetVersion(), handleVersion)
	}
	var st taskState
	if err := json.Unmarshal(hp.GetDriverState(), &st); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "recover task %s: decode driver state: %v", id, err)
	}
	if st.TaskID != id {
		return nil, status.Errorf(codes.InvalidArgument, "recover task %s: driver state is for task %q", id, st.TaskID)
	}
	supAlive := procfs.Alive(st.Supervisor.PID, st.Supervisor.StartTime)
	_, exitErr := os.Stat(filepath.Join(st.StateDir, exitFile))
	if !supAlive && exitErr != nil {
		// Neither running nor a recorded exit: the task is lost. Make sure
		// no engine is left without its supervisor, then let the agent
		// destroy and restart it.
		tmp := newHandle(st, "")
		d.killGroup(tmp, syscall.SIGKILL)
		return nil, status.Errorf(codes.FailedPrecondition, "recover task %s: supervisor pid %d is gone and recorded no exit", id, st.Supervisor.PID)
	}
	apiKey := ""
	if f := d.config().EngineTokenFile; f != "" {
		if b, err := os.ReadFile(f); err == nil {
			apiKey = strings.TrimSpace(string(b))
		} else {
			d.log.Warn("recover task: read engine_token_file", "task_id", id, "error", err)
		}
	}
	var spec supervisorSpec
	if err := readJSON(filepath.Join(st.StateDir, specFile), &spec); err == nil {
		st.Env = envSliceToMap(spec.Env)
	} else {
		d.log.Warn("recover task: read supervisor spec", "task_id", id, "error", err)
	}
	h := newHandle(st, apiKey)
	if err := d.restoreGPUs(id, st.GPUReservation); err != nil {
		d.log.Warn("recover task: restore GPU reservation", "task_id", id, "error", err)
	}
	if !d.tasks.putNew(h) {
		return &drivers.RecoverTaskResponse{}, nil
	}
	go d.watch(h, nil)
	d.log.Info("task recovered", "task_id", id, "engine_pid", st.EnginePID.PID, "running", supAlive)
	d.events.emit(h, "Reattached to the engine after a plugin restart", nil)
	d.announceRecover(h)
	return &drivers.RecoverTaskResponse{}, nil
}

// --- WaitTask / StopTask / DestroyTask / InspectTask / SignalTask ---

func (d *Driver) WaitTask(ctx context.Context, req *drivers.WaitTaskRequest) (*drivers.WaitTaskResponse, error) {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		return nil, status.Errorf(codes.NotFound, "wait task %s: unknown task", req.GetTaskId())
	}
	select {
	case <-h.exited:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	rec, _ := h.exitResult()
	// The result is always set: an agent dereferences it unchecked.
	return &drivers.WaitTaskResponse{
		Result: &drivers.ExitResult{ExitCode: int32(rec.ExitCode), Signal: int32(rec.Signal), OomKilled: rec.OOMKilled},
		Err:    rec.Err,
	}, nil
}

// parseSignal reads "SIGINT", "INT" or a number; "" gives def.
func parseSignal(name string, def syscall.Signal) (syscall.Signal, error) {
	name = strings.TrimSpace(strings.ToUpper(name))
	if name == "" {
		return def, nil
	}
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if s := unix.SignalNum(name); s != 0 {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal %q", name)
}

func (d *Driver) StopTask(ctx context.Context, req *drivers.StopTaskRequest) (*drivers.StopTaskResponse, error) {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		// Stopping what is not here is done; an error would only make the
		// agent retry for minutes.
		d.log.Debug("stop task: unknown task", "task_id", req.GetTaskId())
		return &drivers.StopTaskResponse{}, nil
	}
	d.announceStop(h)
	h.cancel()
	if h.isExited() {
		return &drivers.StopTaskResponse{}, nil
	}
	sig, err := parseSignal(req.GetSignal(), syscall.SIGINT)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "stop task %s: %v", h.st.TaskID, err)
	}
	// The agent always sends the job's kill_timeout; without one, Nomad's
	// default applies.
	timeout := defaultKillTimeout
	if req.GetTimeout() != nil {
		timeout = max(req.GetTimeout().AsDuration(), 0)
	}
	d.log.Debug("stopping task", "task_id", h.st.TaskID, "signal", unix.SignalName(sig), "timeout", timeout.String())
	if e := h.st.EnginePID; procfs.Alive(e.PID, e.StartTime) {
		if err := syscall.Kill(e.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return nil, status.Errorf(codes.Internal, "stop task %s: signal %s: %v", h.st.TaskID, unix.SignalName(sig), err)
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-h.exited:
		return &drivers.StopTaskResponse{}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-t.C:
	}
	d.log.Info("task did not stop in time; killing its process group", "task_id", h.st.TaskID, "timeout", timeout.String())
	d.events.emit(h, fmt.Sprintf("Engine ignored %s for %s; sent SIGKILL", unix.SignalName(sig), timeout), nil)
	d.killGroup(h, syscall.SIGKILL)
	if err := d.waitExited(ctx, h, reapTimeout); err != nil {
		return nil, status.Errorf(codes.DeadlineExceeded, "stop task %s: %v", h.st.TaskID, err)
	}
	return &drivers.StopTaskResponse{}, nil
}

func (d *Driver) waitExited(ctx context.Context, h *taskHandle, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-h.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("engine still running %s after SIGKILL", limit)
	}
}

func (d *Driver) DestroyTask(ctx context.Context, req *drivers.DestroyTaskRequest) (*drivers.DestroyTaskResponse, error) {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		return &drivers.DestroyTaskResponse{}, nil
	}
	if !h.isExited() {
		if !req.GetForce() {
			return nil, status.Errorf(codes.FailedPrecondition, "destroy task %s: still running; stop it first or destroy with force", h.st.TaskID)
		}
		d.announceStop(h)
		d.killGroup(h, syscall.SIGKILL)
		if err := d.waitExited(ctx, h, 5*time.Second); err != nil {
			// The supervisor itself is stuck: kill it; the watcher then
			// records the exit.
			if procfs.Alive(h.st.Supervisor.PID, h.st.Supervisor.StartTime) {
				_ = syscall.Kill(h.st.Supervisor.PID, syscall.SIGKILL)
			}
			if err := d.waitExited(ctx, h, 5*time.Second); err != nil {
				return nil, status.Errorf(codes.DeadlineExceeded, "destroy task %s: %v", h.st.TaskID, err)
			}
		}
	}
	h.cancel()
	d.releaseGPUs(h.st.TaskID)
	d.tasks.delete(h.st.TaskID)
	if err := os.RemoveAll(h.st.StateDir); err != nil {
		d.log.Warn("destroy task: remove state dir", "task_id", h.st.TaskID, "error", err)
	}
	d.log.Debug("task destroyed", "task_id", h.st.TaskID)
	return &drivers.DestroyTaskResponse{}, nil
}

func (d *Driver) InspectTask(_ context.Context, req *drivers.InspectTaskRequest) (*drivers.InspectTaskResponse, error) {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		return nil, status.Errorf(codes.NotFound, "inspect task %s: unknown task", req.GetTaskId())
	}
	rec, exited := h.exitResult()
	state := drivers.TaskState_RUNNING
	completed := time.Time{} // the zero time, never a nil timestamp
	if exited {
		state = drivers.TaskState_EXITED
		completed = rec.CompletedAt
	}
	return &drivers.InspectTaskResponse{
		Task: &drivers.TaskStatus{
			Id: h.st.TaskID, Name: h.st.TaskName, State: state,
			StartedAt:   timestamppb.New(h.st.StartedAt),
			CompletedAt: timestamppb.New(completed),
			Result:      &drivers.ExitResult{ExitCode: int32(rec.ExitCode), Signal: int32(rec.Signal), OomKilled: rec.OOMKilled},
		},
		Driver: &drivers.TaskDriverStatus{Attributes: map[string]string{
			"engine":     h.st.Engine,
			"engine_pid": strconv.Itoa(h.st.EnginePID.PID),
			"address":    joinHostPort(h.st.Host, h.st.Port),
			"model":      h.st.Spec.ModelName,
			"pool":       h.st.PoolID,
		}},
	}, nil
}

func (d *Driver) SignalTask(_ context.Context, req *drivers.SignalTaskRequest) (*drivers.SignalTaskResponse, error) {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		return nil, status.Errorf(codes.NotFound, "signal task %s: unknown task", req.GetTaskId())
	}
	sig, err := parseSignal(req.GetSignal(), 0)
	if err != nil || sig == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "signal task %s: field \"signal\": unknown signal %q", h.st.TaskID, req.GetSignal())
	}
	e := h.st.EnginePID
	if h.isExited() || !procfs.Alive(e.PID, e.StartTime) {
		return nil, status.Errorf(codes.FailedPrecondition, "signal task %s: task is not running", h.st.TaskID)
	}
	if err := syscall.Kill(e.PID, sig); err != nil {
		return nil, status.Errorf(codes.Internal, "signal task %s: %v", h.st.TaskID, err)
	}
	return &drivers.SignalTaskResponse{}, nil
}
