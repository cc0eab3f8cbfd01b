package driver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// maxExecOutput caps what ExecTask buffers per stream (script checks only
// need a little).
const maxExecOutput = 1 << 20

// execCommand builds a command that runs in the task's context: its
// environment and directory, in a process group of its own so a timeout
// kills all of it.
func execCommand(ctx context.Context, h *taskHandle, argv []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = envMapToSlice(execEnv(h))
	cmd.Dir = h.st.TaskDir
	// As the task's user, like the engine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: credential(h.st.Isolation.User)}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// execEnv is the engine's environment without the engine token: the same
// before and after a plugin restart (RecoverTask reads it back from the
// engine), and a shell in the task has no use for the token.
func execEnv(h *taskHandle) map[string]string {
	out := make(map[string]string, len(h.st.Env))
	for k, v := range h.st.Env {
		if h.apiKey != "" && v == h.apiKey {
			continue
		}
		out[k] = v
	}
	return out
}

func exitResultOf(cmd *exec.Cmd, err error) (*drivers.ExitResult, error) {
	if cmd.ProcessState == nil {
		return nil, err
	}
	res := &drivers.ExitResult{ExitCode: int32(cmd.ProcessState.ExitCode())}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = int32(ws.Signal())
		res.ExitCode = 128 + res.Signal
	}
	return res, nil
}

// capped is a buffer that silently drops what is over its limit.
type capped struct {
	bytes.Buffer
	limit int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.Len(); room > 0 {
		if len(p) > room {
			c.Buffer.Write(p[:room])
		} else {
			c.Buffer.Write(p)
		}
	}
	return len(p), nil
}

func (d *Driver) runningTask(id string) (*taskHandle, error) {
	h := d.tasks.get(id)
	if h == nil {
		return nil, status.Errorf(codes.NotFound, "task %s: unknown task", id)
	}
	if h.isExited() {
		return nil, status.Errorf(codes.FailedPrecondition, "task %s: not running", id)
	}
	return h, nil
}

// ExecTask runs a command in the task's context (script checks).
func (d *Driver) ExecTask(ctx context.Context, req *drivers.ExecTaskRequest) (*drivers.ExecTaskResponse, error) {
	h, err := d.runningTask(req.GetTaskId())
	if err != nil {
		return nil, err
	}
	if len(req.GetCommand()) == 0 || req.GetCommand()[0] == "" {
		return nil, status.Error(codes.InvalidArgument, "exec task: field \"command\": required")
	}
	if t := req.GetTimeout().AsDuration(); req.GetTimeout() != nil && t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	var stdout, stderr capped
	stdout.limit, stderr.limit = maxExecOutput, maxExecOutput
	cmd := execCommand(ctx, h, req.GetCommand())
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	res, err := exitResultOf(cmd, runErr)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "exec task %s: %v", h.st.TaskID, err)
	}
	return &drivers.ExecTaskResponse{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Result: res}, nil
}

// ExecTaskStreaming serves `nomad alloc exec` without a terminal: setup
// first, then stdin chunks; output goes back as chunks, then a close on
// each stream and finally the exit.
func (d *Driver) ExecTaskStreaming(stream drivers.Driver_ExecTaskStreamingServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	setup := first.GetSetup()
	if setup == nil {
		return status.Error(codes.InvalidArgument, "exec: the first message must carry setup")
	}
	h, err := d.runningTask(setup.GetTaskId())
	if err != nil {
		return err
	}
	if len(setup.GetCommand()) == 0 || setup.GetCommand()[0] == "" {
		return status.Error(codes.InvalidArgument, "exec: field \"command\": required")
	}
	if setup.GetTty() {
		return d.execTTY(stream, h, setup.GetCommand()) // exec_tty.go
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	cmd := execCommand(ctx, h, setup.GetCommand())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	if err := cmd.Start(); err != nil {
		return status.Errorf(codes.FailedPrecondition, "exec: %v", err)
	}

	var sendMu sync.Mutex
	send := func(r *drivers.ExecTaskStreamingResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(r)
	}
	pump := func(r io.Reader, wrap func(*drivers.ExecTaskStreamingIOOperation) *drivers.ExecTaskStreamingResponse, wg *sync.WaitGroup) {
		defer wg.Done()
		buf := make([]byte, 32*1024)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if send(wrap(&drivers.ExecTaskStreamingIOOperation{Data: append([]byte(nil), buf[:n]...)})) != nil {
					cancel()
					return
				}
			}
			if err != nil {
				_ = send(wrap(&drivers.ExecTaskStreamingIOOperation{Close: true}))
				return
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pump(stdout, func(o *drivers.ExecTaskStreamingIOOperation) *drivers.ExecTaskStreamingResponse {
		return &drivers.ExecTaskStreamingResponse{Stdout: o}
	}, &wg)
	go pump(stderr, func(o *drivers.ExecTaskStreamingIOOperation) *drivers.ExecTaskStreamingResponse {
		return &drivers.ExecTaskStreamingResponse{Stderr: o}
	}, &wg)
	// stdin: owned by this call; it ends when the client closes stdin or
	// the stream, and the command's exit cancels ctx.
	go func() {
		defer stdin.Close()
		for {
			msg, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					cancel()
				}
				return
			}
			if in := msg.GetStdin(); in != nil {
				if len(in.GetData()) > 0 {
					if _, err := stdin.Write(in.GetData()); err != nil {
						return
					}
				}
				if in.GetClose() {
					return
				}
			}
		}
	}()
	wg.Wait()
	waitErr := cmd.Wait()
	res, err := exitResultOf(cmd, waitErr)
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	return send(&drivers.ExecTaskStreamingResponse{Exited: true, Result: res})
}
