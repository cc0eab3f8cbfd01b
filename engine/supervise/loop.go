// The health and load probe loop, and the state it keeps.

package supervise

import (
	"context"
	"fmt"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/registry"
)

func (s *Supervisor) loop(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.ProbeInterval)
	defer tick.Stop()
	lastOK := time.Now()
	var lastErr error
	results := make(chan error, 1)
	inFlight := false
	probe := func() {
		inFlight = true
		go func() {
			pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
			defer cancel()
			err := s.cfg.Adapter.Ready(pctx, s.cfg.Client, s.base, s.cfg.Spec)
			if err == nil {
				l, lerr := s.cfg.Adapter.Load(pctx, s.cfg.Client, s.base, s.cfg.Spec)
				if lerr != nil {
					l = engine.Load{}
				}
				s.mu.Lock()
				s.load = l
				s.mu.Unlock()
			}
			results <- err
		}()
	}
	probe()
	for {
		select {
		case <-ctx.Done():
			if inFlight {
				<-results // the probe goroutine ends with ctx
			}
			return ctx.Err()
		case err := <-results:
			inFlight = false
			if err == nil {
				lastOK = time.Now()
				if _, h, _ := s.State(); h != registry.HealthPassing {
					s.log.Info("engine healthy again")
				}
				s.setState(true, registry.HealthPassing, "ready")
			} else {
				lastErr = err
			}
		case <-tick.C:
			if !inFlight {
				probe()
			}
		}
		if since := time.Since(lastOK); since >= s.cfg.HungAfter {
			if _, h, _ := s.State(); h != registry.HealthCritical {
				s.log.Warn("engine not answering; critical", "for", since.Round(time.Millisecond), "error", lastErr)
			}
			note := fmt.Sprintf("engine not answering for %v", since.Round(100*time.Millisecond))
			if lastErr != nil {
				note += ": " + lastErr.Error()
			}
			s.setState(true, registry.HealthCritical, note)
		}
		s.feed(ctx, false)
	}
}

func (s *Supervisor) setState(ready bool, h registry.Health, note string) {
	s.mu.Lock()
	changed := s.isReady != ready || s.health != h
	s.isReady, s.health, s.note = ready, h, note
	s.mu.Unlock()
	if changed && s.cfg.OnChange != nil {
		s.cfg.OnChange(ready, h, note)
	}
}

func (s *Supervisor) setNote(note string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.note = note
}
