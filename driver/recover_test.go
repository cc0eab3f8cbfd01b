// Recovery: plugin crashes, agent restarts and the agent's startup
// launches.

package driver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// TestRecoverAfterPluginCrash: kill -9 the plugin mid-task, start a new
// one, recover from the handle alone (empty config bytes, no task id, as
// after an agent restart) and still get the engine's real exit code.
func TestRecoverAfterPluginCrash(t *testing.T) {
	p1 := launch(t)
	a := newAlloc(t)
	exitFile := filepath.Join(a.dir, a.task, "local", "exit-code")
	tc := a.taskConfig(t, p1, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_EXIT_FILE": exitFile}}))
	h := start(t, p1, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	enginePids := enginePIDs(a.marker)
	if len(enginePids) == 0 {
		t.Fatal("no engine process found")
	}

	p1.Crash(t)
	eventually(t, 5*time.Second, "plugin gone", p1.Exited)
	time.Sleep(200 * time.Millisecond)
	for _, pid := range enginePids {
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("engine pid %d died with the plugin", pid)
		}
	}

	p2 := launch(t)
	// Recovering a task the agent persisted: only the handle, and its
	// config has lost the msgpack bytes.
	persisted := &drivers.TaskHandle{
		Version:     h.GetVersion(),
		Config:      &drivers.TaskConfig{Id: tc.GetId(), Name: tc.GetName(), AllocId: tc.GetAllocId(), AllocDir: tc.GetAllocDir()},
		State:       drivers.TaskState_UNKNOWN,
		DriverState: h.GetDriverState(),
	}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	// Recovering again is a no-op.
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{TaskId: tc.GetId(), Handle: persisted}); err != nil {
		t.Fatalf("second RecoverTask: %v", err)
	}
	st, err := p2.Driver.TaskStats(ctxT(t, 5*time.Second), &drivers.TaskStatsRequest{TaskId: tc.GetId(), CollectionInterval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := st.Recv(); err != nil || s.GetStats().GetAggResourceUsage().GetMemory().GetRss() == 0 {
		t.Fatalf("stats of a recovered task: %v %v", s, err)
	}

	// The recovered task keeps its environment (exec runs in it).
	ex, err := p2.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: tc.GetId(), Command: []string{"/bin/sh", "-c", "echo $LLORCH_MARKER"}})
	if err != nil || strings.TrimSpace(string(ex.GetStdout())) != a.marker {
		t.Fatalf("exec in a recovered task: %q %v", ex.GetStdout(), err)
	}

	waitCh := make(chan *drivers.WaitTaskResponse, 1)
	go func() {
		r, err := p2.Driver.WaitTask(ctxT(t, 20*time.Second), &drivers.WaitTaskRequest{TaskId: tc.GetId()})
		if err != nil {
			t.Errorf("WaitTask: %v", err)
		}
		waitCh <- r
	}()
	time.Sleep(200 * time.Millisecond)
	if err := os.WriteFile(exitFile, []byte("7"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waitCh:
		if r.GetResult().GetExitCode() != 7 {
			t.Fatalf("recovered task exit: %v err %q, want code 7", r.GetResult(), r.GetErr())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("WaitTask on the recovered task never returned")
	}
	if _, err := p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}

// TestRecoverTaskThatExitedWhileNoPlugin: the engine ends while no plugin
// runs; the next plugin still reports its real exit code, and a
// StopTask/WaitTask on it answer at once.
func TestRecoverTaskThatExitedWhileNoPlugin(t *testing.T) {
	p1 := launch(t)
	a := newAlloc(t)
	exitFile := filepath.Join(a.dir, a.task, "local", "exit-code")
	tc := a.taskConfig(t, p1, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_EXIT_FILE": exitFile}}))
	h := start(t, p1, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	p1.Crash(t)
	if err := os.WriteFile(exitFile, []byte("3"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "engine exit", func() bool { return strings.Contains(a.stdout.String(), "exiting with 3") })
	time.Sleep(300 * time.Millisecond)

	p2 := launch(t)
	persisted := &drivers.TaskHandle{Version: h.GetVersion(), Config: &drivers.TaskConfig{Id: tc.GetId()}, DriverState: h.GetDriverState()}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	r := waitTask(t, p2, tc.GetId(), 5*time.Second)
	if r.GetResult().GetExitCode() != 3 {
		t.Fatalf("exit while no plugin ran: %v err %q, want code 3", r.GetResult(), r.GetErr())
	}
	if _, err := p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)

	// A handle whose task is gone without a record is refused, so the
	// agent destroys and restarts it.
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err == nil {
		t.Fatal("RecoverTask of a destroyed task succeeded")
	}
}

// TestAgentStartupLaunches: the agent starts a plugin three times at
// startup (info+schema; SetConfig twice; long-lived). None of them may
// touch a running task.
func TestAgentStartupLaunches(t *testing.T) {
	p0 := launch(t)
	a := newAlloc(t)
	tc := a.taskConfig(t, p0, engineConfig(writeModel(t), nil))
	h := start(t, p0, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	before := enginePIDs(a.marker)
	p0.Kill() // graceful agent shutdown

	bin := nomadclient.Binary(t)
	p1 := nomadclient.Launch(t, bin)
	if _, err := p1.Base.PluginInfo(ctxT(t, 5*time.Second), &base.PluginInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	schema(t, p1)
	p1.Kill()

	p2 := nomadclient.Launch(t, bin)
	ps, _ := schema(t, p2)
	b, err := nomadclient.EncodeConfig(ps, pluginConfig(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := p2.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0"}); err != nil {
			t.Fatal(err)
		}
	}
	p2.Kill()

	p3 := launch(t)
	fctx, fcancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer fcancel()
	fps, err := p3.Driver.Fingerprint(fctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fps.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := p3.Driver.TaskEvents(fctx, &drivers.TaskEventsRequest{}); err != nil {
		t.Fatal(err)
	}
	after := enginePIDs(a.marker)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("task processes changed across plugin launches: before %v after %v", before, after)
	}
	persisted := &drivers.TaskHandle{Version: h.GetVersion(), Config: &drivers.TaskConfig{Id: tc.GetId()}, DriverState: h.GetDriverState()}
	if _, err := p3.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	if _, err := p3.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if r := waitTask(t, p3, tc.GetId(), 5*time.Second); r.GetResult().GetExitCode() != 0 {
		t.Fatalf("exit: %v", r.GetResult())
	}
	if _, err := p3.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}
