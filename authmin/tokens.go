package authmin

import (
	"context"
	"crypto/subtle"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// MinTokenLen is the shortest token a non-loopback listener accepts.
const MinTokenLen = 32

// DefaultGrace is how long a rotated-out token stays valid.
const DefaultGrace = 5 * time.Minute

// TokenSet holds the live tokens: the current one and, during a rotation's
// grace period, the previous one. It is safe for concurrent use: checks
// read an immutable snapshot (no lock), rotations replace it.
type TokenSet struct {
	mu    sync.Mutex // serialises writers
	slots atomic.Pointer[tokenSlots]
	grace time.Duration
	now   func() time.Time
}

// tokenSlots is one generation of a TokenSet, with each token's digest and
// log identity computed when it was set, not per check.
type tokenSlots struct {
	current, previous string
	curD, prevD       Digest
	curID, prevID     string
	prevTill          time.Time
}

func newSlots(current, previous string, till time.Time) *tokenSlots {
	sl := &tokenSlots{current: current, previous: previous, prevTill: till,
		curD: DigestOf(current), prevD: DigestOf(previous)}
	if current != "" {
		sl.curID = Identity(current)
	}
	if previous != "" {
		sl.prevID = Identity(previous)
	}
	return sl
}

// NewTokenSet makes a set; the first token is current, a second is
// accepted as previous with no expiry (tests, static pairs).
func NewTokenSet(tokens ...string) *TokenSet {
	s := &TokenSet{grace: DefaultGrace, now: time.Now}
	var cur, prev string
	var till time.Time
	if len(tokens) > 0 {
		cur = tokens[0]
	}
	if len(tokens) > 1 {
		prev, till = tokens[1], time.Unix(1<<62, 0)
	}
	s.slots.Store(newSlots(cur, prev, till))
	return s
}

func (s *TokenSet) load() *tokenSlots {
	if sl := s.slots.Load(); sl != nil {
		return sl
	}
	return &tokenSlots{}
}

// Empty reports whether no token is configured.
func (s *TokenSet) Empty() bool {
	return s == nil || s.load().current == ""
}

// Current is the current token ("" when none).
func (s *TokenSet) Current() string {
	if s == nil {
		return ""
	}
	return s.load().current
}

// Check compares token with every live token in constant time: it always
// compares against both slots, so timing does not tell which one matched or
// whether a rotation is in progress.
func (s *TokenSet) Check(token string) bool {
	ok, _ := s.CheckIdentity(token)
	return ok
}

// CheckIdentity is Check that also names the token that matched
// ("token:9f86d0"), from the digest and identity kept with each token.
func (s *TokenSet) CheckIdentity(token string) (bool, string) {
	if s == nil || token == "" {
		return false, ""
	}
	sl := s.load()
	p := digest(token)
	okCur := subtle.ConstantTimeCompare(p[:], sl.curD[:]) == 1 && sl.current != ""
	okPrev := subtle.ConstantTimeCompare(p[:], sl.prevD[:]) == 1 && sl.previous != "" && s.now().Before(sl.prevTill)
	switch {
	case okCur:
		return true, sl.curID
	case okPrev:
		return true, sl.prevID
	}
	return false, ""
}

// Rotate makes token current; the old current stays valid for the grace
// period.
func (s *TokenSet) Rotate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.load()
	if token == old.current {
		return
	}
	s.slots.Store(newSlots(token, old.current, s.now().Add(s.grace)))
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
		s.slots.Store(newSlots(tok, "", time.Time{}))
	case envVar != "" && strings.TrimSpace(os.Getenv(envVar)) != "":
		tok := strings.TrimSpace(os.Getenv(envVar))
		if err := validToken(tok); err != nil {
			return nil, fmt.Errorf("token from $%s: %w", envVar, err)
		}
		s.slots.Store(newSlots(tok, "", time.Time{}))
	}
	if log != nil && s.Current() != "" {
		log.Info("api token loaded", "identity", Identity(s.Current()), "source", sourceName(file, envVar))
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
