// RecoverTask: reattaching to a task after a plugin or agent restart.

package driver

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/driver/cgroup"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/procfs"
)

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
		d.abandon(id, hp)
		return nil, status.Errorf(codes.FailedPrecondition, "recover task %s: handle version %d, this plugin reads %d", id, hp.GetVersion(), handleVersion)
	}
	var st taskState
	if err := json.Unmarshal(hp.GetDriverState(), &st); err != nil {
		d.abandon(id, hp)
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
		d.abandon(id, hp)
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
	// The engine's env is not on disk (it may hold job secrets): read it
	// from the engine itself. A spec from an older plugin still has it.
	var spec supervisorSpec
	if err := readJSON(filepath.Join(st.StateDir, specFile), &spec); err == nil && !spec.EnvFromProcess {
		st.Env = envSliceToMap(spec.Env)
	} else if env, err := procfs.Environ(st.EnginePID.PID, st.EnginePID.StartTime); err == nil {
		st.Env = envSliceToMap(env)
	} else if supAlive {
		d.log.Warn("recover task: read the engine's environment", "task_id", id, "error", err)
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

// A task RecoverTask cannot take back must not keep its engine, port and
// GPUs: abandon kills what the handle recorded, and remembers it so the
// DestroyTask the agent sends next (for an id this plugin does not track)
// kills again and removes the task's state dirs.

// abandoned is what is known of a task that could not be recovered.
type abandoned struct {
	supervisor, engine engineRecord
	stateDirs          []string
	cgroup             *cgroup.Group // isolation.go; removed when driver-made
}

// abandonedTasks is the Driver's table of them, by task id.
type abandonedTasks struct {
	mu    sync.Mutex
	tasks map[string]abandoned
}

// recordedProcesses reads, as leniently as possible, what a handle says
// about its processes: the driver state of any version (only the fields
// below), else the engine record in the state dir the handle's task
// config implies.
func recordedProcesses(id string, hp *drivers.TaskHandle) abandoned {
	var a abandoned
	var loose struct {
		TaskID     string                    `json:"task_id"`
		StateDir   string                    `json:"state_dir"`
		Spec       struct{ StateDir string } `json:"spec"`
		Supervisor engineRecord              `json:"supervisor"`
		EnginePID  engineRecord              `json:"engine_pid"`
		Isolation  struct {
			Cgroup *cgroup.Group `json:"cgroup"`
		} `json:"isolation"`
	}
	if json.Unmarshal(hp.GetDriverState(), &loose) == nil && (loose.TaskID == "" || loose.TaskID == id) {
		a.supervisor, a.engine = loose.Supervisor, loose.EnginePID
		a.cgroup = loose.Isolation.Cgroup
		if loose.StateDir != "" {
			a.stateDirs = append(a.stateDirs, loose.StateDir)
		}
		if loose.Spec.StateDir != "" {
			a.stateDirs = append(a.stateDirs, loose.Spec.StateDir)
		}
	}
	if tc := hp.GetConfig(); tc.GetAllocDir() != "" && tc.GetName() != "" && tc.GetId() == id {
		dir := stateDirFor(tc)
		if len(a.stateDirs) == 0 || a.stateDirs[0] != dir {
			a.stateDirs = append(a.stateDirs, dir)
		}
	}
	if a.engine.PID <= 0 {
		for _, dir := range a.stateDirs {
			var rec engineRecord
			if readJSON(filepath.Join(dir, engineFile), &rec) == nil && rec.PID > 0 {
				a.engine = rec
				break
			}
		}
	}
	return a
}

func (d *Driver) abandon(id string, hp *drivers.TaskHandle) {
	a := recordedProcesses(id, hp)
	d.killAbandoned(id, a)
	d.abandoned.mu.Lock()
	if d.abandoned.tasks == nil {
		d.abandoned.tasks = map[string]abandoned{}
	}
	d.abandoned.tasks[id] = a
	d.abandoned.mu.Unlock()
}

// killAbandoned SIGKILLs the engine's process group, then the supervisor,
// each only if it is still the process recorded (pid and start time), and
// waits up to reapTimeout for them to be gone.
func (d *Driver) killAbandoned(id string, a abandoned) {
	e, s := a.engine, a.supervisor
	if e.StartTime != 0 && groupIsOurs(e) {
		d.log.Warn("killing the engine of a task that cannot be recovered", "task_id", id, "pgid", e.PID)
		if err := syscall.Kill(-e.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			d.log.Warn("kill engine group", "task_id", id, "pgid", e.PID, "error", err)
		}
	}
	if s.PID > 0 && s.StartTime != 0 && procfs.Alive(s.PID, s.StartTime) {
		if err := syscall.Kill(s.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			d.log.Warn("kill task supervisor", "task_id", id, "pid", s.PID, "error", err)
		}
	}
	deadline := time.Now().Add(reapTimeout)
	for time.Now().Before(deadline) {
		engineGone := e.StartTime == 0 || !groupIsOurs(e)
		supGone := s.PID <= 0 || s.StartTime == 0 || !procfs.Alive(s.PID, s.StartTime)
		if engineGone && supGone {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.log.Warn("processes of an unrecoverable task still alive", "task_id", id, "engine_pid", e.PID, "supervisor_pid", s.PID)
}

// destroyAbandoned handles DestroyTask for an id RecoverTask gave up on:
// kill again (the agent may retry after a while) and remove its dirs.
func (d *Driver) destroyAbandoned(id string) bool {
	d.abandoned.mu.Lock()
	a, ok := d.abandoned.tasks[id]
	delete(d.abandoned.tasks, id)
	d.abandoned.mu.Unlock()
	if !ok {
		return false
	}
	d.killAbandoned(id, a)
	if g := a.cgroup; g != nil && len(g.Made) > 0 {
		_ = g.KillAll()
		if err := g.Remove(5 * time.Second); err != nil {
			d.log.Warn("destroy task: remove cgroup", "task_id", id, "error", err)
		}
	}
	for _, dir := range a.stateDirs {
		if err := os.RemoveAll(dir); err != nil {
			d.log.Warn("destroy task: remove state dir", "task_id", id, "error", err)
		}
	}
	return true
}
