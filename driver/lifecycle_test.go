// The task lifecycle through the protocol: start, exec, stop, destroy.

package driver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

func TestTaskLifecycle(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	evCtx, evCancel := context.WithCancel(ctxT(t, 30*time.Second))
	defer evCancel()
	events, err := p.Driver.TaskEvents(evCtx, &drivers.TaskEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var evMu sync.Mutex
	var evs []*drivers.DriverTaskEvent
	go func() {
		for {
			ev, err := events.Recv()
			if err != nil {
				return
			}
			evMu.Lock()
			evs = append(evs, ev)
			evMu.Unlock()
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the events stream subscribe

	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{
		"ctx": 2048, "slots": 2, "extra_args": []string{"--flag"}, "env": map[string]interface{}{"EXTRA": "1"},
	}))
	h := start(t, p, tc)
	id := tc.GetId()

	// Logs reach the agent's FIFOs straight from the engine.
	eventually(t, 5*time.Second, "engine output in the stdout FIFO", func() bool {
		return strings.Contains(a.stdout.String(), "fake engine started") && strings.Contains(a.stderr.String(), "fake engine stderr line")
	})
	if out := a.stdout.String(); !strings.Contains(out, "--port "+strconv.Itoa(a.port)) || !strings.Contains(out, "--host 127.0.0.1") {
		t.Fatalf("engine command line lacks the resolved host/port: %q", out)
	}

	ins, err := p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if ins.GetTask().GetState() != drivers.TaskState_RUNNING || ins.GetTask().GetStartedAt() == nil || ins.GetTask().GetCompletedAt() == nil {
		t.Fatalf("inspect running: %v", ins.GetTask())
	}

	// Stats: timestamp and aggregate always set, memory measured.
	sctx, scancel := context.WithCancel(ctxT(t, 10*time.Second))
	stats, err := p.Driver.TaskStats(sctx, &drivers.TaskStatsRequest{TaskId: id, CollectionInterval: durationpb.New(200 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s, err := stats.Recv()
		if err != nil {
			t.Fatalf("stats #%d: %v", i, err)
		}
		st := s.GetStats()
		if st.GetTimestamp() == nil || st.GetAggResourceUsage() == nil || st.GetAggResourceUsage().GetMemory().GetRss() == 0 {
			t.Fatalf("stats #%d: %v", i, st)
		}
		if len(st.GetResourceUsageByPid()) < 1 {
			t.Fatalf("stats #%d: no per-pid usage", i)
		}
	}
	scancel()

	// Signal: the engine reports it got SIGUSR1.
	if _, err := p.Driver.SignalTask(ctxT(t, 5*time.Second), &drivers.SignalTaskRequest{TaskId: id, Signal: "SIGUSR1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "SIGUSR1 in the engine's output", func() bool { return strings.Contains(a.stdout.String(), "got SIGUSR1") })
	if _, err := p.Driver.SignalTask(ctxT(t, 5*time.Second), &drivers.SignalTaskRequest{TaskId: id, Signal: "SIGNOPE"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown signal: %v", err)
	}

	// Exec in the task's environment.
	ex, err := p.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: id,
		Command: []string{"/bin/sh", "-c", "echo $EXTRA $NOMAD_TASK_NAME; echo err >&2; exit 3"}, Timeout: durationpb.New(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if string(ex.GetStdout()) != "1 engine\n" || string(ex.GetStderr()) != "err\n" || ex.GetResult().GetExitCode() != 3 {
		t.Fatalf("exec: stdout %q stderr %q result %v", ex.GetStdout(), ex.GetStderr(), ex.GetResult())
	}
	testExecStreaming(t, p, id)

	// Stop with the agent's default: empty signal means SIGINT; the engine
	// exits 0 on it.
	t0 := time.Now()
	if _, err := p.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: id, Timeout: durationpb.New(5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("stop took %s although the engine handles SIGINT", d)
	}
	res := waitTask(t, p, id, 5*time.Second)
	if res.GetResult().GetExitCode() != 0 || res.GetResult().GetSignal() != 0 || res.GetErr() != "" {
		t.Fatalf("exit after SIGINT: %v err %q", res.GetResult(), res.GetErr())
	}
	if !strings.Contains(a.stdout.String(), "got SIGINT") {
		t.Fatalf("engine did not see SIGINT: %q", a.stdout.String())
	}
	// Repeated wait answers at once; stop again is fine.
	waitTask(t, p, id, time.Second)
	if _, err := p.Driver.StopTask(ctxT(t, 5*time.Second), &drivers.StopTaskRequest{TaskId: id}); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	ins, err = p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if ins.GetTask().GetState() != drivers.TaskState_EXITED || ins.GetTask().GetCompletedAt().AsTime().Before(ins.GetTask().GetStartedAt().AsTime()) {
		t.Fatalf("inspect exited: %v", ins.GetTask())
	}
	// The stats stream ends once the task has exited.
	st2, err := p.Driver.TaskStats(ctxT(t, 5*time.Second), &drivers.TaskStatsRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stats of an exited task: want end of stream, got %v", err)
	}

	for i := 0; i < 2; i++ { // idempotent
		if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: id, Force: true}); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	a.requireNoProcesses(t)
	if _, err := p.Driver.WaitTask(ctxT(t, 2*time.Second), &drivers.WaitTaskRequest{TaskId: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("wait after destroy: %v", err)
	}

	evMu.Lock()
	defer evMu.Unlock()
	var msgs []string
	for _, ev := range evs {
		if ev.GetTaskId() == id && ev.GetAllocId() == a.id && ev.GetTaskName() == a.task && ev.GetTimestamp() != nil {
			msgs = append(msgs, ev.GetMessage())
		}
	}
	joined := strings.Join(msgs, " | ")
	if !strings.Contains(joined, "Started llamacpp engine") || !strings.Contains(joined, "exited with code 0") {
		t.Fatalf("task events: %q", joined)
	}
	_ = h
}

func testExecStreaming(t *testing.T, p *nomadclient.Plugin, id string) {
	t.Helper()
	s, err := p.Driver.ExecTaskStreaming(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Setup: &drivers.ExecTaskStreamingRequest_Setup{TaskId: id, Command: []string{"/bin/sh", "-c", "read x; echo got-$x; exit 4"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Data: []byte("ping\n")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Close: true}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	closes := 0
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("exec stream: %v (output %q)", err, out.String())
		}
		out.Write(r.GetStdout().GetData())
		if r.GetStdout().GetClose() {
			closes++
		}
		if r.GetStderr().GetClose() {
			closes++
		}
		if r.GetExited() {
			if r.GetResult().GetExitCode() != 4 || out.String() != "got-ping\n" || closes != 2 {
				t.Fatalf("exec stream: result %v output %q closes %d", r.GetResult(), out.String(), closes)
			}
			return
		}
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_ON_INT": "ignore"}}))
	start(t, p, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })

	t0 := time.Now()
	_, err := p.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(time.Second), Signal: ""})
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(t0)
	if d < time.Second || d > 4*time.Second {
		t.Fatalf("stop with a 1s kill_timeout took %s", d)
	}
	res := waitTask(t, p, tc.GetId(), 5*time.Second)
	if res.GetResult().GetSignal() != int32(syscall.SIGKILL) {
		t.Fatalf("want SIGKILL exit, got %v", res.GetResult())
	}
	if !strings.Contains(a.stdout.String(), "ignoring SIGINT") {
		t.Fatalf("engine never got SIGINT: %q", a.stdout.String())
	}
	if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}
