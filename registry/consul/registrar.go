// Package consul holds both sides of the Consul schema. The Registrar
// (registrar.go, used by the driver) announces engine instances to the local
// Consul agent: one service registration per instance with a TTL check the
// supervisor feeds. The Watcher (watcher.go, used by the router) follows the
// service with blocking queries. Consul drops the instance from passing-only queries when the
// feeder stops (TTL), when the node dies (serfHealth) and, after
// DeregisterAfter, from the catalog altogether.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/registry"
)

// Defaults: a TTL short enough that a driver that stops feeding the check
// turns critical within ~3 s, and Consul's minimum reap delay.
const (
	DefaultTTL             = 3 * time.Second
	DefaultDeregisterAfter = time.Minute
	DefaultTimeout         = 5 * time.Second
)

// ErrNotRegistered is returned by SetHealth when the agent does not know
// the instance (e.g. the agent restarted and lost it): register again.
var ErrNotRegistered = errors.New("instance not registered with the consul agent")

// RegistrarConfig says how to reach the agent and how to register.
type RegistrarConfig struct {
	// Address of the agent's HTTP API (host:port or URL); empty means
	// CONSUL_HTTP_ADDR or 127.0.0.1:8500.
	Address string
	// Token, else the contents of TokenFile, else CONSUL_HTTP_TOKEN.
	Token     string
	TokenFile string
	// Service is the Consul service name (default registry.DefaultServiceName).
	Service         string
	TTL             time.Duration
	DeregisterAfter time.Duration
	// Timeout bounds each call to the agent (default 5 s).
	Timeout time.Duration
	// TLS is the agent's HTTPS settings beyond the environment's.
	TLS    TLS
	Logger hclog.Logger
}

// Registrar implements registry.Registrar on the local Consul agent.
type Registrar struct {
	client  *consulapi.Client
	cfg     RegistrarConfig
	tokenFP string
	addr    string
	log     hclog.Logger
}

// New builds a Registrar; it does not contact the agent.
func NewRegistrar(cfg RegistrarConfig) (*Registrar, error) {
	if cfg.Service == "" {
		cfg.Service = registry.DefaultServiceName
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.DeregisterAfter <= 0 {
		cfg.DeregisterAfter = DefaultDeregisterAfter
	}
	if cfg.DeregisterAfter < time.Minute {
		return nil, fmt.Errorf("consulreg: deregister_after %v is below Consul's minimum of 1m", cfg.DeregisterAfter)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	cc := consulapi.DefaultConfig() // reads CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN
	if cfg.Address != "" {
		cc.Address = cfg.Address
	}
	switch {
	case cfg.Token != "":
		cc.Token = cfg.Token
	case cfg.TokenFile != "":
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consulreg: read token file: %w", err)
		}
		cc.Token = strings.TrimSpace(string(b))
		if cc.Token == "" {
			return nil, fmt.Errorf("consulreg: token file %s is empty", cfg.TokenFile)
		}
	}
	if err := cfg.TLS.Apply(cc, cfg.Timeout); err != nil {
		return nil, fmt.Errorf("consulreg: TLS to %s: %w", cc.Address, err)
	}
	client, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consulreg: consul client for %s: %w", cc.Address, err)
	}
	r := &Registrar{client: client, cfg: cfg, tokenFP: fingerprint(cc.Token), addr: cc.Address}
	r.log = cfg.Logger.With("consul", cc.Address, "token", r.tokenFP)
	return r, nil
}

// fingerprint names a token in logs and errors without revealing it.
func fingerprint(token string) string {
	if token == "" {
		return "token:none"
	}
	return authmin.Identity(token)
}

// CheckID is the TTL check of an instance.
func CheckID(instanceID string) string { return instanceID + ":ttl" }

func (r *Registrar) serviceName(inst registry.Instance) string {
	if inst.Service != "" {
		return inst.Service
	}
	return r.cfg.Service
}

// Register creates or replaces inst's registration. The check starts in
// inst.Health (or, when that is empty, the state the agent already has for
// it, else critical), so re-registering a passing instance never flaps.
func (r *Registrar) Register(ctx context.Context, inst registry.Instance) error {
	if err := inst.Validate(); err != nil {
		return fmt.Errorf("consulreg: %w", err)
	}
	meta, err := inst.Meta()
	if err != nil {
		return fmt.Errorf("consulreg: %w", err)
	}
	svc := r.serviceName(inst)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	status := string(inst.Health)
	if status == "" {
		status = consulapi.HealthCritical
		checks, err := r.client.Agent().ChecksWithFilterOpts(
			fmt.Sprintf("CheckID == %q", CheckID(inst.ID)), (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return r.wrap(err, "read check of", svc, inst.ID)
		}
		if c, ok := checks[CheckID(inst.ID)]; ok {
			status = c.Status
		}
	}
	reg := &consulapi.AgentServiceRegistration{
		ID:      inst.ID,
		Name:    svc,
		Address: inst.Address,
		Port:    inst.Port,
		Tags:    inst.Tags(),
		Meta:    meta,
		Checks: consulapi.AgentServiceChecks{{
			CheckID:                        CheckID(inst.ID),
			Name:                           "llorch engine " + inst.Engine + " serving " + inst.Model,
			TTL:                            r.cfg.TTL.String(),
			Status:                         status,
			DeregisterCriticalServiceAfter: r.cfg.DeregisterAfter.String(),
		}},
	}
	opts := consulapi.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return r.wrap(err, "register", svc, inst.ID)
	}
	r.log.Debug("registered", "service", svc, "id", inst.ID, "status", status)
	return nil
}

// SetHealth feeds the instance's TTL check.
func (r *Registrar) SetHealth(ctx context.Context, id string, h registry.Health, note string) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	var status string
	switch h {
	case registry.HealthPassing, registry.HealthWarning, registry.HealthCritical:
		status = string(h)
	default:
		return fmt.Errorf("consulreg: set health of %s: unknown health %q", id, h)
	}
	err := r.client.Agent().UpdateTTLOpts(CheckID(id), note, status, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		var se consulapi.StatusError
		if errors.As(err, &se) && (se.Code == http.StatusNotFound || strings.Contains(se.Body, "does not have associated TTL") || strings.Contains(se.Body, "Unknown check")) {
			return fmt.Errorf("consulreg: set health of %s: %w", id, ErrNotRegistered)
		}
		return r.wrap(err, "update health of", r.cfg.Service, id)
	}
	return nil
}

// Deregister removes the instance at once; an unknown id is not an error.
func (r *Registrar) Deregister(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	err := r.client.Agent().ServiceDeregisterOpts(id, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		var se consulapi.StatusError
		if errors.As(err, &se) && se.Code == http.StatusNotFound {
			return nil
		}
		return r.wrap(err, "deregister", r.cfg.Service, id)
	}
	r.log.Debug("deregistered", "id", id)
	return nil
}

// wrap turns Consul's answers into errors an operator can act on; an ACL
// refusal names the token (by fingerprint) and the permission it lacks.
func (r *Registrar) wrap(err error, what, svc, id string) error {
	var se consulapi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden {
		perm := "service:write"
		if strings.Contains(se.Body, "'node:") {
			perm = "node:read"
		} else if strings.Contains(se.Body, "'agent:") {
			perm = "agent:read"
		}
		return fmt.Errorf("consul ACL denied: token %s lacks %s on %s (%s %s): %w", r.tokenFP, perm, svc, what, id, ErrACLDenied)
	}
	return fmt.Errorf("consul %s %s (agent %s, %s): %w", what, id, r.addr, r.tokenFP, err)
}

// ErrACLDenied marks errors caused by the token's permissions: retrying
// will not help until the token or policy changes. It is registry.ErrDenied,
// which supervisors test for without knowing the registry.
var ErrACLDenied = registry.ErrDenied
