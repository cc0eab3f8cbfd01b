// The registry side: the instance, registering it, feeding its check
// and deregistering.

package supervise

import (
	"context"
	"errors"
	"time"

	"github.com/llorch/llorch/registry"
)

func (s *Supervisor) instance(h registry.Health) registry.Instance {
	inst := s.cfg.Instance
	inst.Health = h
	s.mu.Lock()
	if s.version != "" {
		inst.EngineVersion = s.version
	}
	s.mu.Unlock()
	if inst.Engine == "" {
		inst.Engine = s.cfg.Adapter.Name()
	}
	if len(inst.APIs) == 0 {
		inst.APIs = s.cfg.Adapter.APIs()
	}
	return inst
}

// register announces the instance passing. Transient failures are retried
// every interval (Err reports them meanwhile); an ACL refusal ends Run.
func (s *Supervisor) register(ctx context.Context) error {
	lastErr := ""
	for {
		err := s.registerOnce(ctx, registry.HealthPassing)
		if err == nil {
			s.setState(true, registry.HealthPassing, "ready")
			close(s.ready)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isPermanent(err) {
			s.log.Error("registration refused; the task will not be ready", "error", err)
			return err
		}
		// Warn once per distinct error: a registry that is down for a while
		// must not flood the log at the probe rate.
		if err.Error() != lastErr {
			s.log.Warn("registration failed; retrying", "error", err)
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.cfg.ProbeInterval):
		}
	}
}

func (s *Supervisor) registerOnce(ctx context.Context, h registry.Health) error {
	if s.cfg.Registrar == nil {
		return nil
	}
	err := s.cfg.Registrar.Register(ctx, s.instance(h))
	s.mu.Lock()
	s.err = err
	if err == nil {
		s.registered = true
		s.lastFeed, s.fedHealth = time.Now(), h
	}
	s.mu.Unlock()
	return err
}

// isPermanent reports errors retrying cannot fix: the registrar says the
// token lacks permission.
func isPermanent(err error) bool { return errors.Is(err, registry.ErrDenied) }

// feed sends the current health to the registry when it changed, or when
// the last feed is old enough that the TTL needs it.
func (s *Supervisor) feed(ctx context.Context, force bool) {
	if s.cfg.Registrar == nil {
		return
	}
	s.mu.Lock()
	h, note, registered := s.health, s.note, s.registered
	due := force || h != s.fedHealth || time.Since(s.lastFeed) >= feedEvery
	s.mu.Unlock()
	if !registered || !due {
		return
	}
	err := s.cfg.Registrar.SetHealth(ctx, s.cfg.Instance.ID, h, note)
	if err != nil && ctx.Err() == nil {
		// The agent lost the registration (restart): assert it again with
		// the health we know, so nothing flaps that was passing.
		if rerr := s.registerOnce(ctx, h); rerr != nil {
			s.log.Warn("health feed failed", "error", err, "reregister_error", rerr)
			return
		}
		s.log.Info("re-registered after the registry lost the instance", "feed_error", err)
		return
	}
	if err == nil {
		s.mu.Lock()
		s.lastFeed, s.fedHealth = time.Now(), h
		s.mu.Unlock()
	}
}

func (s *Supervisor) deregister(ctx context.Context) {
	if s.cfg.Registrar == nil {
		return
	}
	err := s.cfg.Registrar.Deregister(ctx, s.cfg.Instance.ID)
	s.mu.Lock()
	s.deregErr = err
	s.registered = false
	s.mu.Unlock()
	if err != nil {
		s.log.Error("deregister failed; the registry's TTL will turn it critical", "error", err)
	}
}
