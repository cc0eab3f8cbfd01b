// Controlling a running task: the exit watcher, wait, stop, destroy,
// inspect and signal.

package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/procfs"
)

const (
	// reapTimeout bounds the wait for a SIGKILLed group to be reported gone.
	reapTimeout = 10 * time.Second
	// pollInterval is how often a recovered task's supervisor is checked.
	pollInterval = 100 * time.Millisecond
	// defaultKillTimeout is Nomad's default kill_timeout.
	defaultKillTimeout = 5 * time.Second
)

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
