package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/router"
	"github.com/llorch/llorch/router/scaler"
)

// newScaler plugs pool scaling into the router when a Nomad address is
// configured; it returns the scaler's Run (nil when scaling is off).
func newScaler(cfg router.Config, cc *consulapi.Client, rt *router.Router, reg *prometheus.Registry, log hclog.Logger) (func(context.Context) error, error) {
	if cfg.NomadAddr == "" {
		return nil, nil
	}
	ncfg := nomad.DefaultConfig()
	ncfg.Address = cfg.NomadAddr
	ncfg.Namespace = cfg.NomadNamespace
	from := "NOMAD_TOKEN"
	if cfg.NomadTokenFile != "" {
		b, err := os.ReadFile(cfg.NomadTokenFile)
		if err != nil {
			return nil, fmt.Errorf("nomad token file: %w", err)
		}
		ncfg.SecretID, from = strings.TrimSpace(string(b)), cfg.NomadTokenFile
	}
	nc, err := nomad.NewClient(ncfg)
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	if ncfg.SecretID == "" {
		log.Warn("no Nomad token: pool scaling works only with Nomad ACLs off")
	} else {
		log.Info("nomad token", "from", from, "token", "token:"+authmin.TokenFP6(ncfg.SecretID))
	}
	sc, err := scaler.New(scaler.Config{Nomad: nc, Namespace: cfg.NomadNamespace, Consul: cc, Load: rt,
		Interval: cfg.ScaleInterval, Sustain: cfg.ScaleSustain, UpCooldown: cfg.ScaleUpCooldown, DownCooldown: cfg.ScaleDownCooldown,
		TargetBusy: float64(cfg.ScaleBusyPercent) / 100, Logger: log.Named("scaler"), Registerer: reg})
	if err != nil {
		return nil, err
	}
	rt.SetDemand(sc)
	log.Info("pools follow demand", "nomad", cfg.NomadAddr, "namespace", cfg.NomadNamespace)
	return sc.Run, nil
}
