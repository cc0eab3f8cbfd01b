// `nomad alloc exec` through the protocol, with and without a terminal,
// as the agent relays it.

package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// startAsUser starts the fake engine as nobody when the tests run as root
// (so exec is checked to run as the task's user), else as the caller.
func startAsUser(t *testing.T, p *nomadclient.Plugin, a *alloc) (tc *drivers.TaskConfig, h *drivers.TaskHandle, uid string) {
	t.Helper()
	model := writeModel(t)
	user, uid := "", strconv.Itoa(os.Geteuid())
	if os.Geteuid() == 0 {
		user, uid = "nobody", "65534"
		openForUser(t, a.dir, model)
	}
	tc = a.agentTaskConfig(t, p, engineConfig(model, nil), func(na *nomadclient.Alloc) { na.User = user })
	h = start(t, p, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	return tc, h, uid
}

// A terminal exec: the shell is on a tty of the size the CLI reported,
// echoes input, follows a resize, runs as the task's user and returns its
// exit code after one stdout close (a terminal has no stderr).
func TestExecWithTTY(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	tc, _, uid := startAsUser(t, p, a)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := p.ExecStreaming(ctx, tc.GetId(), []string{"/bin/sh"}, true, &nomadclient.TTYSize{Height: 24, Width: 80})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("[ -t 0 ] && echo on-a-tty; stty size; id -u; echo sum-$((40+2))\n")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "shell output", func() bool { return strings.Contains(s.Stdout(), "sum-42") })
	out := s.Stdout()
	for _, want := range []string{"echo sum-$((40+2))", "on-a-tty", "24 80", "\n" + uid + "\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, out)
		}
	}
	if err := s.Resize(40, 132); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a resize and the next input are separate messages
	if _, err := s.Write([]byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "size after resize", func() bool { return strings.Contains(s.Stdout(), "40 132") })
	if _, err := s.Write([]byte("exit 7\n")); err != nil {
		t.Fatal(err)
	}
	res, _, stderr, closes, err := s.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetExitCode() != 7 {
		t.Errorf("exit code %d, want 7", res.GetExitCode())
	}
	if closes != 1 || stderr != "" {
		t.Errorf("closes %d stderr %q: a terminal has one output stream, closed once", closes, stderr)
	}
}

// Without a terminal: separate streams, stdin to EOF, the exit code, as
// the task's user.
func TestExecWithoutTTYAsTaskUser(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	tc, _, uid := startAsUser(t, p, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := p.ExecStreaming(ctx, tc.GetId(), []string{"/bin/sh", "-c", "id -u; [ -t 0 ] || echo no-tty; cat; echo err >&2; exit 3"}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("from-stdin\n"))
	s.CloseStdin()
	res, stdout, stderr, closes, err := s.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetExitCode() != 3 || stdout != uid+"\nno-tty\nfrom-stdin\n" || stderr != "err\n" || closes != 2 {
		t.Fatalf("exit %d stdout %q stderr %q closes %d", res.GetExitCode(), stdout, stderr, closes)
	}
}

// exec sees the same environment after a plugin restart as before, and
// never the engine token.
func TestExecEnvSameAfterPluginRestart(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "engine.token")
	const token = "exec-env-token-0123456789abcdef0123"
	if err := os.WriteFile(tok, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := pluginConfig(t, map[string]interface{}{"engine_token_file": tok})
	p1 := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p1, cfg)
	a := newAlloc(t)
	tc, handle, _ := startAsUser(t, p1, a)
	envOf := func(p *nomadclient.Plugin) string {
		res, err := p.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: tc.GetId(), Command: []string{"env"}})
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(res.GetStdout())), "\n")
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	before := envOf(p1)
	if strings.Contains(before, token) {
		t.Errorf("exec env holds the engine token:\n%s", before)
	}
	if !strings.Contains(before, "LLORCH_MARKER="+a.marker) {
		t.Fatalf("exec env lacks the task env:\n%s", before)
	}
	p1.Crash(t)
	eventually(t, 5*time.Second, "plugin gone", p1.Exited)
	p2 := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p2, cfg)
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{TaskId: tc.GetId(), Handle: handle}); err != nil {
		t.Fatal(err)
	}
	if after := envOf(p2); after != before {
		t.Fatalf("exec env changed across a plugin restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	stopAndDestroy(t, p2, tc.GetId())
}
