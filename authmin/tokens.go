package authmin

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// MinTokenLen is the shortest token a non-loopback listener accepts.
const MinTokenLen = 32

// DefaultGrace is how long a rotated-out token stays valid.
const DefaultGrace = 5 * time.Minute

// TokenSet holds the live tokens: the current one and, during a rotation's
// grace period, the previous one. It is safe for concurrent use.
type TokenSet struct {
	mu       sync.RWMutex
	current  string
	previous string
	prevTill time.Time
	grace    time.Duration
	now      func() time.Time
}

// NewTokenSet makes a set; the first token is current, a second is
// accepted as previous with no expiry (tests, static pairs).
func NewTokenSet(tokens ...string) *TokenSet {
	s := &TokenSet{grace: DefaultGrace, now: time.Now}
	if len(tokens) > 0 {
		s.current = tokens[0]
	}
	if len(tokens) > 1 {
		s.previous = tokens[1]
		s.prevTill = time.Unix(1<<62, 0)
	}
	return s
}

// Empty reports whether no token is configured.
func (s *TokenSet) Empty() bool {
	if s == nil {
		return true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current == ""
}

// Current is the current token ("" when none).
func (s *TokenSet) Current() string {
	if s == nil {
		return ""
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current
}

// Check compares token with every live token in constant time: it always
// compares against both slots, so timing does not tell which one matched or
// whether a rotation is in progress.
func (s *TokenSet) Check(token string) bool {
	if s == nil || token == "" {
		return false
	}
	s.mu.RLock()
	cur, prev, till := s.current, s.previous, s.prevTill
	s.mu.RUnlock()
	okCur := cur != "" && TimingSafeEqual(token, cur)
	okPrev := TimingSafeEqual(token, prev) && prev != "" && s.now().Before(till)
	return okCur || okPrev
}

// Rotate makes token current; the old current stays valid for the grace
// period.
func (s *TokenSet) Rotate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token == s.current {
		return
	}
	s.previous, s.prevTill = s.current, s.now().Add(s.grace)
	s.current = token
}

// readTokenFile reads a token file: surrounding whitespace is trimmed; a
// file readable by group or others is worth a warning.
func readTokenFile(path string, log hclog.Logger) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if info.Mode().Perm()&tooOpen != 0 && log != nil {
		log.Warn("token file is more open than 0640; chmod 0600 it", "path", path, "mode", fmt.Sprintf("%04o", info.Mode().Perm()))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	if strings.ContainsAny(tok, "\r\n") {
		// Say so plainly: the generic control-character error would send
		// the operator looking for invisible bytes.
		return "", fmt.Errorf("token file %s holds more than one line; it must hold exactly one token", path)
	}
	if err := validToken(tok); err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	return tok, nil
}

// validToken applies ParseBearer's rules to a configured token: one the
// parser would reject could never be presented, so it is a config error.
func validToken(tok string) error {
	_, err := ParseBearer("Bearer " + tok)
	return err
}

// tooOpen are the mode bits beyond 0640 (owner rw, group r): group write,
// anything for others. (Owner bits are the owner's business.)
const tooOpen = 0o037

// watchPoll is how often Watch re-reads the token file (tests shorten or
// lengthen it).
var watchPoll = time.Second

// LoadTokenSet reads the token from file (preferred) or the environment
// variable envVar. Tokens never come from flags: flags show in `ps`. No
// file and no variable gives an empty set (callers decide if that is
// allowed; see CheckBind).
func LoadTokenSet(file, envVar string, grace time.Duration, log hclog.Logger) (*TokenSet, error) {
	s := NewTokenSet()
	if grace > 0 {
		s.grace = grace
	}
	switch {
	case file != "":
		tok, err := readTokenFile(file, log)
		if err != nil {
			return nil, err
		}
		s.current = tok
	case envVar != "" && strings.TrimSpace(os.Getenv(envVar)) != "":
		tok := strings.TrimSpace(os.Getenv(envVar))
		if err := validToken(tok); err != nil {
			return nil, fmt.Errorf("token from $%s: %w", envVar, err)
		}
		s.current = tok
	}
	if log != nil && s.current != "" {
		log.Info("api token loaded", "identity", Identity(s.current), "source", sourceName(file, envVar))
	}
	return s, nil
}

func sourceName(file, env string) string {
	if file != "" {
		return file
	}
	return "$" + env
}

// Watch re-reads file on SIGHUP and whenever its content changes (polled
// every second, which also catches an mtime change, an editor's rename and
// a secret agent's atomic replace), rotating the set with the grace period.
// It returns when ctx ends and owns its SIGHUP subscription until then. A
// failed read keeps the current token and logs why.
func (s *TokenSet) Watch(ctx context.Context, file string, log hclog.Logger) {
	if file == "" {
		return
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(watchPoll)
	defer tick.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-tick.C:
		}
		// The mode warning is logged once at load, not every second.
		tok, err := readTokenFile(file, nil)
		if err != nil {
			// Once per distinct failure: a file mid-replacement or
			// deleted must not flood the log every second.
			if err.Error() != lastErr {
				log.Warn("token file re-read failed; keeping the current token", "path", file, "error", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if tok != s.Current() {
			old := s.Current()
			s.Rotate(tok)
			log.Info("api token rotated", "identity", Identity(tok), "previous", Identity(old), "grace", s.grace.String())
		}
	}
}
