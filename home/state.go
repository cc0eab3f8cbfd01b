package home

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// stateFile records the engines this home profile runs (pid, start time,
// port, spec fingerprint) so the next run can adopt or stop them after a
// crash. An exclusive lock on it keeps two home profiles from sharing a
// state dir.
type stateFile struct {
	path string
	lock *os.File
	mu   sync.Mutex
	list []stateEntry
}

type stateEntry struct {
	Pool  string `json:"pool"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc start time: guards against pid reuse
	Port  int    `json:"port"`
	Spec  string `json:"spec"` // fingerprint of the engine's spec
}

func openState(dir string) (*stateFile, error) {
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another llorch home is running with state dir %s", dir)
	}
	s := &stateFile{path: filepath.Join(dir, "engines.json"), lock: lock}
	if b, err := os.ReadFile(s.path); err == nil {
		_ = json.Unmarshal(b, &s.list) // a broken file only loses cleanup hints
	}
	return s, nil
}

// take empties the list and returns what it held.
func (s *stateFile) take() []stateEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	left := s.list
	s.list = nil
	return left
}

// keep puts an adopted entry back.
func (s *stateFile) keep(e stateEntry) {
	s.mu.Lock()
	s.list = append(s.list, e)
	s.mu.Unlock()
}

func (s *stateFile) add(e stateEntry) error {
	s.keep(e)
	return s.save()
}

func (s *stateFile) remove(pid int) {
	s.mu.Lock()
	out := s.list[:0]
	for _, e := range s.list {
		if e.PID != pid {
			out = append(out, e)
		}
	}
	s.list = out
	s.mu.Unlock()
	_ = s.save()
}

func (s *stateFile) save() error {
	s.mu.Lock()
	b, _ := json.Marshal(s.list)
	s.mu.Unlock()
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}

func (s *stateFile) close() {
	if s.lock != nil {
		s.lock.Close()
	}
}
