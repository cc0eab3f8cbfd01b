package authmin

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// startWatch runs s.Watch on file with the given poll interval until the
// test ends.
func startWatch(t *testing.T, s *TokenSet, file string, poll time.Duration, log hclog.Logger) {
	t.Helper()
	old := watchPoll
	watchPoll = poll
	t.Cleanup(func() { watchPoll = old })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Watch(ctx, file, log); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// File A, Watch, replace with B: both pass during the grace period, only B
// after it, and the grace period is not cut short.
func TestWatchRotationGrace(t *testing.T) {
	f := filepath.Join(t.TempDir(), "api.token")
	tokA, tokB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if err := os.WriteFile(f, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const grace = 1500 * time.Millisecond
	s, err := LoadTokenSet(f, "", grace, nil)
	if err != nil {
		t.Fatal(err)
	}
	startWatch(t, s, f, 20*time.Millisecond, nil)

	written := time.Now()
	if err := os.WriteFile(f, []byte(tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new token", 3*time.Second, func() bool { return s.Check(tokB) })
	if !s.Check(tokA) {
		t.Fatal("old token rejected during the grace period")
	}
	gone := waitFor(t, "the old token to expire", grace+3*time.Second, func() bool { return !s.Check(tokA) })
	if held := gone.Sub(written); held < grace {
		t.Errorf("old token dropped after %v, before the %v grace period", held, grace)
	}
	if !s.Check(tokB) || s.Check(tokA) {
		t.Error("after the grace period only the new token may pass")
	}
}

// SIGHUP re-reads the file at once, without waiting for the poll.
func TestWatchSIGHUP(t *testing.T) {
	// Our own subscription keeps a SIGHUP that arrives before Watch's from
	// killing the test binary.
	own := make(chan os.Signal, 16)
	signal.Notify(own, syscall.SIGHUP)
	defer signal.Stop(own)

	f := filepath.Join(t.TempDir(), "api.token")
	tokA, tokB := strings.Repeat("a", 64), strings.Repeat("c", 64)
	os.WriteFile(f, []byte(tokA), 0o600)
	s, err := LoadTokenSet(f, "", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	startWatch(t, s, f, time.Hour, nil) // the poll never fires
	os.WriteFile(f, []byte(tokB), 0o600)
	waitFor(t, "SIGHUP to load the new token", 5*time.Second, func() bool {
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		time.Sleep(40 * time.Millisecond)
		return s.Check(tokB)
	})
	if !s.Check(tokA) {
		t.Error("old token rejected during the grace period")
	}
}

// A broken file mid-rotation keeps the current token and is logged once,
// not every poll.
func TestWatchKeepsTokenOnBadFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "api.token")
	tokA := strings.Repeat("a", 64)
	os.WriteFile(f, []byte(tokA), 0o600)
	s, err := LoadTokenSet(f, "", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	startWatch(t, s, f, 10*time.Millisecond, hclog.New(&hclog.LoggerOptions{Output: &logs}))
	os.WriteFile(f, nil, 0o600)
	time.Sleep(300 * time.Millisecond)
	if !s.Check(tokA) {
		t.Fatal("an empty file replaced the current token")
	}
	if n := strings.Count(logs.String(), "re-read failed"); n != 1 {
		t.Errorf("re-read failure logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestLoadTokenFileRules(t *testing.T) {
	dir := t.TempDir()
	tok := strings.Repeat("t", 64)

	open := filepath.Join(dir, "open.token")
	os.WriteFile(open, []byte(tok), 0o600)
	os.Chmod(open, 0o644)
	var logs bytes.Buffer
	if _, err := LoadTokenSet(open, "", 0, hclog.New(&hclog.LoggerOptions{Output: &logs})); err != nil {
		t.Fatalf("a too-open file is a warning, not an error: %v", err)
	}
	if !strings.Contains(logs.String(), "[WARN]") || !strings.Contains(logs.String(), "0644") || strings.Contains(logs.String(), tok) {
		t.Errorf("mode 0644: want a warning naming the mode and no token:\n%s", logs.String())
	}
	for _, mode := range []os.FileMode{0o600, 0o640, 0o400} {
		logs.Reset()
		os.Chmod(open, mode)
		LoadTokenSet(open, "", 0, hclog.New(&hclog.LoggerOptions{Output: &logs}))
		if strings.Contains(logs.String(), "[WARN]") {
			t.Errorf("mode %04o warned:\n%s", mode, logs.String())
		}
	}

	two := filepath.Join(dir, "two.token")
	os.WriteFile(two, []byte(tok+"\n"+tok+"x\n"), 0o600)
	if _, err := LoadTokenSet(two, "", 0, nil); err == nil || !strings.Contains(err.Error(), "one token") || strings.Contains(err.Error(), tok) {
		t.Errorf("two lines: %v", err)
	}

	ctl := filepath.Join(dir, "ctl.token")
	os.WriteFile(ctl, []byte(tok+"\x01"), 0o600)
	if _, err := LoadTokenSet(ctl, "", 0, nil); err == nil || !strings.Contains(err.Error(), ctl) {
		t.Errorf("control character: %v", err)
	}

	// The file wins over the variable; a bad variable names itself.
	t.Setenv("LLORCH_TEST_TOKEN", "from-env-"+tok)
	if s, err := LoadTokenSet(open, "LLORCH_TEST_TOKEN", 0, nil); err != nil || !s.Check(tok) || s.Check("from-env-"+tok) {
		t.Errorf("file must win over env: %v", err)
	}
	t.Setenv("LLORCH_TEST_TOKEN", "bad\x7ftoken")
	if _, err := LoadTokenSet("", "LLORCH_TEST_TOKEN", 0, nil); err == nil || !strings.Contains(err.Error(), "$LLORCH_TEST_TOKEN") {
		t.Errorf("bad env token: %v", err)
	}
	if s, err := LoadTokenSet("", "LLORCH_TEST_TOKEN_UNSET", 0, nil); err != nil || !s.Empty() {
		t.Errorf("nothing configured: %v, empty=%v", err, s.Empty())
	}
}

// syncBuffer is a bytes.Buffer that a watcher goroutine may write while
// the test reads it.
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
