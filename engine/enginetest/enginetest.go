// Package enginetest starts real engines for tests, through their
// engine.Adapter command lines, so tests exercise the exact command the
// driver runs.
package enginetest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
)

// Proc is a running engine process.
type Proc struct {
	Cmd  *exec.Cmd
	Base string // http://host:port
	Spec engine.Spec
	done chan struct{}

	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

// Logs is what the engine printed so far.
func (p *Proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// Done is closed when the process has exited (and been reaped).
func (p *Proc) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Kill kills the process and waits for it.
func (p *Proc) Kill() {
	p.Cmd.Process.Signal(syscall.SIGCONT) // a stopped process must be able to die
	p.Cmd.Process.Kill()
	<-p.done
}

// LlamaSpec is a spec for the real llama-server serving the default tiny
// generated model on a free loopback port.
func LlamaSpec(t testing.TB) engine.Spec {
	t.Helper()
	return engine.Spec{
		Model:     ggufgen.TestModel(t, ggufgen.DefaultOptions()),
		ModelName: "tiny",
		Host:      "127.0.0.1",
		Port:      testenv.FreePort(t),
		Ctx:       512,
		Slots:     2,
		Threads:   1,
	}
}

// Start runs the adapter's command for spec and stops it when the test
// ends. It does not wait for readiness.
func Start(t testing.TB, a engine.Adapter, binary string, spec engine.Spec) *Proc {
	t.Helper()
	cmd, err := a.Command(binary, spec)
	if err != nil {
		t.Fatalf("%s command: %v", a.Name(), err)
	}
	p := &Proc{Spec: spec, done: make(chan struct{}), Base: fmt.Sprintf("http://%s:%d", spec.Host, spec.Port)}
	p.Cmd = exec.Command(cmd.Path, cmd.Args...)
	p.Cmd.Env = append(os.Environ(), cmd.Env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p, p
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)
	return p
}

// StartLlama starts the real llama-server (testenv.LlamaServer) with spec
// and waits until the adapter reports it ready.
func StartLlama(t testing.TB, spec engine.Spec) *Proc {
	t.Helper()
	a, err := engine.Get("llamacpp")
	if err != nil {
		t.Fatal(err)
	}
	p := Start(t, a, testenv.LlamaServer(t), spec)
	WaitReady(t, a, p, 20*time.Second)
	return p
}

// WaitReady polls the adapter's Ready until it succeeds.
func WaitReady(t testing.TB, a engine.Adapter, p *Proc, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before ready:\n%s", a.Name(), p.Logs())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = a.Ready(ctx, http.DefaultClient, p.Base, p.Spec)
		cancel()
		if last == nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s not ready after %v: %v\n%s", a.Name(), limit, last, p.Logs())
}
