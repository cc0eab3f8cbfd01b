// RecoverTask: reattaching to a task after a plugin or agent restart.

package driver

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
