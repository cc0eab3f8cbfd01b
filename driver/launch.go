// Launching a task: GPUs, the engine's command and env, the supervisor
// process, and the wait for the engine's pid.

package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/procfs"
)

// launchTimeout bounds how long StartTask waits for the supervisor to
// report the engine's pid.
const launchTimeout = 15 * time.Second

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
