package nomadclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// ExecSession is one `nomad alloc exec` as the agent relays it to the
// driver: setup first, then (with a terminal) the terminal's size, then
// stdin chunks, resizes and a stdin close as the user produces them.
// Output is collected in the background until the driver sends the exit.
type ExecSession struct {
	stream drivers.Driver_ExecTaskStreamingClient
	sendMu sync.Mutex

	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	closes         int
	result         *drivers.ExitResult
	err            error
	done           chan struct{}
}

// TTYSize is a terminal's size in character cells.
type TTYSize struct{ Height, Width int32 }

// ExecStreaming opens the exec stream for taskID. With tty set, size is
// sent right after setup, as the CLI reports its terminal before any input.
func (p *Plugin) ExecStreaming(ctx context.Context, taskID string, command []string, tty bool, size *TTYSize) (*ExecSession, error) {
	stream, err := p.Driver.ExecTaskStreaming(ctx)
	if err != nil {
		return nil, err
	}
	s := &ExecSession{stream: stream, done: make(chan struct{})}
	if err := s.send(&drivers.ExecTaskStreamingRequest{Setup: &drivers.ExecTaskStreamingRequest_Setup{TaskId: taskID, Command: command, Tty: tty}}); err != nil {
		return nil, err
	}
	if tty && size != nil {
		if err := s.Resize(size.Height, size.Width); err != nil {
			return nil, err
		}
	}
	go s.recv()
	return s, nil
}

func (s *ExecSession) send(m *drivers.ExecTaskStreamingRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(m)
}

func (s *ExecSession) recv() {
	defer close(s.done)
	for {
		r, err := s.stream.Recv()
		s.mu.Lock()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.err = err
			} else if s.result == nil {
				s.err = fmt.Errorf("exec stream ended without an exit")
			}
			s.mu.Unlock()
			return
		}
		s.stdout.Write(r.GetStdout().GetData())
		s.stderr.Write(r.GetStderr().GetData())
		if r.GetStdout().GetClose() {
			s.closes++
		}
		if r.GetStderr().GetClose() {
			s.closes++
		}
		if r.GetExited() {
			s.result = r.GetResult()
			s.mu.Unlock()
			_ = s.stream.CloseSend()
			return
		}
		s.mu.Unlock()
	}
}

// Write sends stdin data.
func (s *ExecSession) Write(p []byte) (int, error) {
	if err := s.send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Data: append([]byte(nil), p...)}}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseStdin sends the stdin close (end of input).
func (s *ExecSession) CloseStdin() error {
	return s.send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Close: true}})
}

// Resize sends a terminal size change (SIGWINCH at the CLI).
func (s *ExecSession) Resize(height, width int32) error {
	return s.send(&drivers.ExecTaskStreamingRequest{TtySize: &drivers.ExecTaskStreamingRequest_TerminalSize{Height: height, Width: width}})
}

// Stdout is the output so far (with a terminal, all of it).
func (s *ExecSession) Stdout() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stdout.String()
}

// Wait returns the exit, the output and how many stream closes came.
func (s *ExecSession) Wait(ctx context.Context) (res *drivers.ExitResult, stdout, stderr string, closes int, err error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, s.Stdout(), "", 0, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.result, s.stdout.String(), s.stderr.String(), s.closes, s.err
}
