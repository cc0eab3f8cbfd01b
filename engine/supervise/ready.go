// Waiting for the engine to become ready, and reading its version.

package supervise

import (
	"context"
	"time"
)

func (s *Supervisor) waitReady(ctx context.Context) error {
	start := time.Now()
	// Probe soon, then back off: a small model is up in tens of
	// milliseconds, a large one takes minutes; 100 ms flat would add most
	// of 100 ms to every fast start.
	retry := 5 * time.Millisecond
	maxRetry := min(s.cfg.ProbeInterval, 100*time.Millisecond)
	var lastErr error
	for {
		attempt, cancel := context.WithTimeout(ctx, s.cfg.ReadyAttempt)
		err := s.cfg.Adapter.Ready(attempt, s.cfg.Client, s.base, s.cfg.Spec)
		cancel()
		if err == nil {
			s.log.Info("engine ready", "after", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if lastErr == nil || lastErr.Error() != err.Error() {
			s.log.Debug("waiting for engine", "reason", err)
		}
		lastErr = err
		s.setNote(err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
		retry = min(retry*2, maxRetry)
	}
}

func (s *Supervisor) readVersion(ctx context.Context) {
	vctx, cancel := context.WithTimeout(ctx, 5*s.cfg.ProbeTimeout)
	defer cancel()
	v, err := s.cfg.Adapter.Version(vctx, s.cfg.Client, s.base, s.cfg.Spec)
	if err != nil {
		s.log.Warn("engine version unknown", "error", err)
		return
	}
	s.mu.Lock()
	s.version = v
	s.mu.Unlock()
}
