// `nomad alloc exec` with a terminal (the CLI's default at a terminal,
// and what the web UI always asks for): the command runs on a new
// pseudo-terminal as the session leader with it as its controlling
// terminal, as the task's user; tty_size messages resize it; all output
// comes back on stdout (a terminal has one output stream), then a close
// and the exit.

package driver

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// ttyDrain bounds how long output still buffered in the terminal is read
// after the command exited (a background child may hold the terminal open
// forever).
const ttyDrain = time.Second

func (d *Driver) execTTY(stream drivers.Driver_ExecTaskStreamingServer, h *taskHandle, argv []string) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ptmx, tty, err := pty.Open()
	if err != nil {
		return status.Errorf(codes.Internal, "exec: open a terminal: %v", err)
	}
	defer ptmx.Close()
	cred := credential(h.st.Isolation.User)
	if cred != nil {
		// The user's own terminal, as login does: programs that reopen
		// /dev/tty need it.
		_ = os.Chown(tty.Name(), int(cred.Uid), -1)
	}
	cmd := execCommand(ctx, h, argv)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// A session of its own with the terminal as its controlling terminal
	// (its fd 0 in the child), so ^C and job control reach it; the session
	// is also its process group, which a cancel kills.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: cred}
	if err := cmd.Start(); err != nil {
		tty.Close()
		return status.Errorf(codes.FailedPrecondition, "exec: %v", err)
	}
	tty.Close() // the child holds it; our copy would keep the terminal open after it exits

	var sendMu sync.Mutex
	send := func(r *drivers.ExecTaskStreamingResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(r)
	}

	// Output: until the terminal reports EIO (every holder closed it) or
	// the drain after exit ends.
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		buf := make([]byte, 32*1024)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				if send(&drivers.ExecTaskStreamingResponse{Stdout: &drivers.ExecTaskStreamingIOOperation{Data: append([]byte(nil), buf[:n]...)}}) != nil {
					cancel()
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()

	// Input and resizes: owned by this call; it ends with the stream, and
	// the command's exit cancels ctx.
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					cancel()
				}
				return
			}
			if sz := msg.GetTtySize(); sz != nil && sz.GetHeight() > 0 && sz.GetWidth() > 0 {
				if err := pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(sz.GetHeight()), Cols: uint16(sz.GetWidth())}); err != nil {
					d.log.Debug("exec: resize terminal", "task_id", h.st.TaskID, "error", err)
				}
			}
			if in := msg.GetStdin(); in != nil && len(in.GetData()) > 0 {
				if _, err := ptmx.Write(in.GetData()); err != nil {
					return
				}
			}
			// stdin close: a terminal has no end of input of its own; the
			// command ends by itself or with the stream.
		}
	}()

	waitErr := cmd.Wait()
	select {
	case <-outDone:
	case <-time.After(ttyDrain):
		_ = ptmx.SetReadDeadline(time.Now()) // unblock the reader
		<-outDone
	}
	res, err := exitResultOf(cmd, waitErr)
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	if err := send(&drivers.ExecTaskStreamingResponse{Stdout: &drivers.ExecTaskStreamingIOOperation{Close: true}}); err != nil {
		return err
	}
	return send(&drivers.ExecTaskStreamingResponse{Exited: true, Result: res})
}
