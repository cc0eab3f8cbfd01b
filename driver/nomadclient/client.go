// Package nomadclient is the protocol test client: it starts the built
// llorch binary the way a Nomad agent starts a driver plugin (magic cookie
// in the environment, go-plugin client, gRPC over a unix socket) and speaks
// to it only through the wire protocol, encoding configs the way the agent
// does. CI has it instead of a real Nomad agent, so it stays faithful to
// the agent: see /work/shared/research/nomad-plugin-protocol.md.
package nomadclient

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// Handshake is the agent's side of the handshake, spelled out here rather
// than taken from the driver so a wrong constant there fails the tests.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

// connPlugin hands the raw gRPC connection to the caller.
type connPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (connPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("client side only")
}

func (connPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
}

// Plugin is one running plugin process.
type Plugin struct {
	Base   base.BasePluginClient
	Driver drivers.DriverClient
	Pid    int

	client *plugin.Client
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Launch starts the plugin binary as the agent does: argv is the path
// alone, the environment is ours plus the cookie and go-plugin's
// variables, gRPC is the only protocol. It is killed when the test ends;
// its log is printed if the test failed.
func Launch(t testing.TB, bin string) *Plugin {
	t.Helper()
	return LaunchCmd(t, exec.Command(bin))
}

// LaunchCmd is Launch for a prepared command, e.g. `ip netns exec <ns>
// llorch` to run the plugin on a test host in a network namespace (the
// unix socket works across namespaces on one filesystem).
func LaunchCmd(t testing.TB, cmd *exec.Cmd) *Plugin {
	t.Helper()
	bin := cmd.Path
	logs := &syncBuffer{}
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          plugin.PluginSet{"base": connPlugin{}, "driver": connPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "agent", Output: logs, Level: hclog.Trace}),
	})
	rpc, err := c.Client()
	if err != nil {
		c.Kill()
		t.Fatalf("launch plugin %s: %v\n%s", bin, err, logs.String())
	}
	raw, err := rpc.Dispense("driver")
	if err != nil {
		c.Kill()
		t.Fatalf("dispense driver: %v", err)
	}
	conn := raw.(*grpc.ClientConn)
	p := &Plugin{
		Base:   base.NewBasePluginClient(conn),
		Driver: drivers.NewDriverClient(conn),
		Pid:    c.ReattachConfig().Pid,
		client: c,
		logs:   logs,
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("plugin pid %d log:\n%s", p.Pid, logs.String())
		}
	})
	return p
}

// Kill stops the plugin the way the agent does on shutdown (go-plugin's
// graceful kill, then SIGKILL). Tasks must survive it.
func (p *Plugin) Kill() { p.client.Kill() }

// Crash SIGKILLs the plugin process, as a crash or `kill -9` would.
func (p *Plugin) Crash(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(p.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 plugin %d: %v", p.Pid, err)
	}
	p.client.Kill() // let the client notice and clean up its side
}

// Exited reports whether the plugin process is gone.
func (p *Plugin) Exited() bool { return p.client.Exited() }

// Logs is what the plugin wrote to stderr so far.
func (p *Plugin) Logs() string { return p.logs.String() }

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Binary is the llorch binary under test: $LLORCH_BIN, else built once
// (per test process) from this checkout into a temp dir.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LLORCH_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "llorch-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "llorch")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", builtBin, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}
